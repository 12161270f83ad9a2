# syntax=docker/dockerfile:1
# eslstream: build with the Rust toolchain, run on a slim Debian as an unprivileged user.
#   docker build -t eslstream .
#   docker run --network host -e ESL_HOST=127.0.0.1 -e REDIS_URL=redis://redis:6379/0 \
#     -v eslstream-spool:/var/lib/eslstream eslstream

FROM rust:1-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
COPY simulate ./simulate
# Cache mounts keep the registry and compiled dependencies between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --workspace \
    && install -D -m 0755 target/release/eslstream /out/eslstream \
    && install -D -m 0755 target/release/eslstream-simulate /out/eslstream-simulate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 eslstream \
    && useradd --system --uid 10001 --gid eslstream --home-dir /var/lib/eslstream --shell /usr/sbin/nologin eslstream \
    && install -d -o eslstream -g eslstream -m 0750 /var/lib/eslstream /var/lib/eslstream/spool
COPY --from=builder /out/eslstream /usr/local/bin/eslstream
# The fake switch of the compose demo (`eslstream simulate` runs it); the agent does not load it.
COPY --from=builder /out/eslstream-simulate /usr/local/bin/eslstream-simulate

# The spool and the dead letters live here: keep it on a volume so a restart loses nothing.
ENV SPOOL_DIR=/var/lib/eslstream/spool \
    HEALTH_PORT=9876
VOLUME ["/var/lib/eslstream"]
WORKDIR /var/lib/eslstream
USER eslstream:eslstream
EXPOSE 9876

# `eslstream health` GETs http://127.0.0.1:$HEALTH_PORT/health (no curl in the image):
# exit 0 when healthy, 1 when degraded, unhealthy or not answering.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["eslstream", "health"]

# SIGTERM drains what is in flight to Redis (or the spool) within SHUTDOWN_TIMEOUT (default 10s);
# give `docker stop` more than that: `docker stop -t 30` / compose `stop_grace_period`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["eslstream"]
