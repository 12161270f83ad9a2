#!/usr/bin/env bash
# Runs every test: unit, property, capture, end-to-end and fault tests against real
# redis-server processes (single servers, a Redis Cluster, Sentinels) and PostgreSQL clusters
# that the tests start themselves.
#
# The whole suite runs once per server users run: Debian's Redis 7.0 (`redis-server` on PATH)
# and Valkey 8 from Debian's backports (`valkey-server`). With REDIS_SERVER_BIN (and
# REDIS_CLI_BIN) set, it runs once, against that server: a path, or a name on PATH.
# Arguments are passed to each `cargo test`. Then scripts/api-check.sh holds the HTTP API to
# openapi.yaml with schemathesis.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --locked --workspace --no-run
if [ -n "${REDIS_SERVER_BIN:-}" ]; then
  echo "== the suite against $("$REDIS_SERVER_BIN" --version)" >&2
  cargo test --locked --workspace "$@"
  exec scripts/api-check.sh
fi
echo "== the suite against $(redis-server --version)" >&2
REDIS_SERVER_BIN=redis-server REDIS_CLI_BIN=redis-cli cargo test --locked --workspace "$@"
echo "== the suite against $(valkey-server --version)" >&2
REDIS_SERVER_BIN=valkey-server REDIS_CLI_BIN=valkey-cli cargo test --locked --workspace "$@"
# The HTTP API against its document (openapi.yaml), with schemathesis.
scripts/api-check.sh
