#!/usr/bin/env bash
# The demo: a local redis-server, the built-in FreeSWITCH simulator, and the agent between
# them. Shows entries arriving in Redis and a few of them through `eslstream tail`, stops the
# agent with SIGTERM once it has drained, and ends with a verdict read from the streams
# themselves (not from the agent's counters): every event the simulator sent is in Redis,
# exactly once by (core_uuid, event_sequence).
#   DEMO_SECONDS=20 DEMO_CPS=20 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh demo
cargo build --release --locked --workspace
bin=target/release/eslstream
seconds=${DEMO_SECONDS:-15}
cps=${DEMO_CPS:-20}
redis_port=${DEMO_REDIS_PORT:-6399}
esl_port=${DEMO_ESL_PORT:-18021}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cli() { redis-cli -p "$redis_port" "$@"; }

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes \
  --logfile "$work/redis.log" >/dev/null
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done

# Sends for DEMO_SECONDS from the agent's subscription, then exits with its count.
"$bin" simulate --listen "127.0.0.1:$esl_port" --cps "$cps" --duration "${seconds}s" --quiet 2>"$work/simulate.log" &
sim=$!
pids+=($sim)

export REDIS_URL="redis://127.0.0.1:$redis_port/0"
ESL_HOST=127.0.0.1 ESL_PORT=$esl_port EVENTS_TO_PUSH=ALL SPOOL_DIR="$work/spool" HEALTH_PORT=0 \
  METRICS_PRINT_INTERVAL=5s "$bin" &
agent=$!
pids+=($agent)

events=freeswitch:telephony:events
jobs=freeswitch:telephony:background-jobs
in_redis() { echo $(($(cli XLEN "$events") + $(cli XLEN "$jobs"))); }
i=0
while kill -0 "$sim" 2>/dev/null; do
  sleep 1
  i=$((i + 1))
  echo "demo: t=${i}s  XLEN $events = $(cli XLEN "$events")  XLEN $jobs = $(cli XLEN "$jobs")"
done
wait "$sim" || { echo "demo: the simulator failed:" >&2; cat "$work/simulate.log" >&2; exit 1; }
sent=$(sed -n 's/^simulate: done: \([0-9]*\) events.*/\1/p' "$work/simulate.log")
[ -n "$sent" ] || { echo "demo: no count from the simulator:" >&2; cat "$work/simulate.log" >&2; exit 1; }

echo "demo: the last hangups, as 'eslstream tail --since 1m --event CHANNEL_HANGUP' shows them:"
timeout --preserve-status -s INT 2 "$bin" tail --since 1m --event CHANNEL_HANGUP 2>/dev/null | tail -n 5

# Let the agent write what it still holds (at most 30 s without progress), then stop it.
last=-1 still=0
while [ "$(in_redis)" -lt "$sent" ] && [ "$still" -lt 30 ]; do
  now=$(in_redis)
  if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; last=$now; fi
  sleep 1
done
kill -TERM "$agent"
wait "$agent" && echo "demo: agent stopped cleanly (exit 0)"

# Every entry's (core_uuid, event_sequence), read back with redis-cli, 5,000 entries a page.
pairs() {
  local key=$1 start=- page last
  while :; do
    page=$(cli --raw XRANGE "$key" "$start" + COUNT 5000)
    last=$(grep -E '^[0-9]+-[0-9]+$' <<<"$page" | tail -n 1 || true)
    [ -n "$last" ] || break
    awk 'prev == "core_uuid" { core = $0 } prev == "event_sequence" { print core, $0 } { prev = $0 }' <<<"$page"
    start="($last"
  done
}
{ pairs "$events"; pairs "$jobs"; } >"$work/pairs"
n_events=$(cli XLEN "$events")
n_jobs=$(cli XLEN "$jobs")
entries=$((n_events + n_jobs))
read_back=$(wc -l <"$work/pairs")
distinct=$(sort -u "$work/pairs" | wc -l)
lost=$((sent > distinct ? sent - distinct : 0))
duplicated=$((entries - distinct))
echo "demo: the simulator sent $sent events"
echo "demo: Redis holds $entries entries ($n_events in $events, $n_jobs in $jobs), $read_back read back by XRANGE, $distinct distinct (core_uuid, event_sequence)"
if [ "$read_back" -eq "$entries" ] && [ "$distinct" -eq "$entries" ] && [ "$entries" -eq "$sent" ]; then
  echo "demo: verdict: nothing lost, nothing duplicated ($sent sent = $distinct distinct entries in Redis)"
else
  echo "demo: verdict: FAILED: $lost lost, $duplicated duplicated ($sent sent, $entries entries, $distinct distinct)"
  exit 1
fi
