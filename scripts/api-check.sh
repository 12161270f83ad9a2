#!/usr/bin/env bash
# Holds the agent to its HTTP contract, openapi.yaml: schemathesis (from PyPI, pinned, in a
# virtual environment under target/) runs every operation against a live agent (the debug
# build), with a real Redis (appendfsync everysec), the simulator as its
# switch (so the agent is healthy), the HTTP ingress on and both tokens set, and two dead
# letters in the store for the /dlq/{id} operations. Every check: no 5xx, every answer as the
# document says (status, headers, body schema, content type), bad input and missing or wrong
# credentials refused, valid input accepted. Called by scripts/test.sh; runs alone too.
# REDIS_SERVER_BIN/REDIS_CLI_BIN choose the server, as for the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
redis_server=${REDIS_SERVER_BIN:-redis-server}
redis_cli=${REDIS_CLI_BIN:-redis-cli}
examples=${API_CHECK_EXAMPLES:-300}
schemathesis_version=4.32.5

# The agent and the simulator, as `cargo test` left them (built again only if it did not).
cargo build --locked --workspace --bins --quiet

venv="$root/target/api-check-venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
redis_port=$(free_port)
esl_port=$(free_port)
http_port=$(free_port)
"$redis_server" --port "$redis_port" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync everysec \
  --save "" >"$work/redis.log" 2>&1 &
pids+=($!)
target/debug/eslstream-simulate --listen "127.0.0.1:$esl_port" --rate 20 >"$work/simulate.log" 2>&1 &
pids+=($!)

ingress_token=api-check-ingress-token-0123456789
admin_token=api-check-admin-token-0123456789
http_stream=api-check:http-events
for _ in $(seq 100); do "$redis_cli" -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
# The HTTP stream's key holds a string at first: the first event posted is refused for good
# (WRONGTYPE) and becomes a dead letter; then the key goes and events are written.
"$redis_cli" -p "$redis_port" set "$http_stream" "not a stream" >/dev/null
ESL_HOST=127.0.0.1 ESL_PORT=$esl_port REDIS_URL=redis://127.0.0.1:$redis_port SPOOL_DIR="$work/spool" \
  HEALTH_BIND=127.0.0.1 HEALTH_PORT=$http_port HEALTH_CHECK_INTERVAL=200ms HTTP_INGRESS=true \
  HTTP_INGRESS_TOKENS="api:$ingress_token" HTTP_TOKEN=$admin_token HTTP_STREAM=$http_stream \
  target/debug/eslstream >"$work/agent.log" 2>&1 &
pids+=($!)
base=http://127.0.0.1:$http_port
for _ in $(seq 300); do curl -fs "$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
if ! curl -fs "$base/health" >/dev/null; then
  echo "api-check: the agent did not become healthy" >&2
  cat "$work/agent.log" "$work/simulate.log" >&2
  exit 1
fi
# Two dead letters: one to read, one to retry (a retry that succeeds takes it out of the store).
for id in dead-letter-1 dead-letter-2; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$base/events" -H "Authorization: Bearer $ingress_token" \
    -H 'Content-Type: application/json' -d "{\"event_type\":\"seed\",\"event_id\":\"$id\"}")
  [ "$code" = 500 ] || { echo "api-check: seeding a dead letter answered $code, not 500" >&2; exit 1; }
done
"$redis_cli" -p "$redis_port" del "$http_stream" >/dev/null
dead_letters=$(curl -fs "$base/dlq" -H "Authorization: Bearer $admin_token" |
  python3 -c 'import json, sys; print(" ".join(i["id"] for i in json.load(sys.stdin)["items"]))')
read -r to_read to_retry <<<"$dead_letters"

cat >"$work/schemathesis.toml" <<EOF
# Bad input is refused with 400, 401, 403, 404, 405, 413 (too many events, too large) or 415.
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 413, 415]

[auth.openapi.producerToken]
bearer = "\${API_CHECK_INGRESS_TOKEN}"
[auth.openapi.adminToken]
bearer = "\${API_CHECK_ADMIN_TOKEN}"

[[operations]]
include-name = "GET /dlq/{id}"
parameters = { id = "$to_read" }

[[operations]]
include-name = "POST /dlq/{id}/retry"
parameters = { id = "$to_retry" }

# A declared Content-Encoding of gzip needs a gzip body, which the document cannot generate.
[[operations]]
include-path = "/events"
parameters = { "Content-Encoding" = "identity" }
EOF
echo "== schemathesis $schemathesis_version against the agent ($("$redis_server" --version | cut -d' ' -f1-3))" >&2
# From the scratch directory: schemathesis keeps its state (.schemathesis/) where it runs.
(cd "$work" && API_CHECK_INGRESS_TOKEN=$ingress_token API_CHECK_ADMIN_TOKEN=$admin_token \
  PYTHONPATH="$root/scripts" SCHEMATHESIS_HOOKS=api_check_hooks "$venv/bin/schemathesis" --no-color \
  --config-file "$work/schemathesis.toml" run "$root/openapi.yaml" \
  --url "$base" --checks all --max-examples "$examples" --seed "${API_CHECK_SEED:-20261203}" \
  --generation-database none) || {
  echo "--- agent log" >&2
  tail -50 "$work/agent.log" >&2
  exit 1
}
