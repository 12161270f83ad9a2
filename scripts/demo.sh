#!/usr/bin/env bash
# The demo: a local redis-server, the built-in FreeSWITCH simulator, and the agent between
# them. Shows entries arriving in Redis, then stops everything cleanly.
#   DEMO_SECONDS=20 DEMO_CPS=20 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
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

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes \
  --logfile "$work/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$bin" simulate --listen "127.0.0.1:$esl_port" --cps "$cps" &
pids+=($!)

ESL_HOST=127.0.0.1 ESL_PORT=$esl_port REDIS_URL="redis://127.0.0.1:$redis_port/0" \
  EVENTS_TO_PUSH=ALL SPOOL_DIR="$work/spool" HEALTH_PORT=0 METRICS_PRINT_INTERVAL=5s \
  "$bin" &
agent=$!
pids+=($agent)

events=freeswitch:telephony:events
jobs=freeswitch:telephony:background-jobs
for i in $(seq "$seconds"); do
  sleep 1
  echo "demo: t=${i}s  XLEN $events = $(redis-cli -p "$redis_port" XLEN "$events")  XLEN $jobs = $(redis-cli -p "$redis_port" XLEN "$jobs")"
done
echo "demo: newest entry (XREVRANGE $events + - COUNT 1):"
redis-cli -p "$redis_port" XREVRANGE "$events" + - COUNT 1
kill -TERM "$agent"
wait "$agent" && echo "demo: agent stopped cleanly (exit 0)"
