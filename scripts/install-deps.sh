#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: redis-server and redis-cli (the
# tests start their own servers on free ports; the scale-out tests also run them as a Redis
# Cluster, made with `redis-cli --cluster create`, and as sentinels, `redis-server
# --sentinel`, so no other package is needed), promtool (checks /metrics and the alert
# rules), systemd-analyze (checks the unit file), openssl (makes a throwaway certificate for
# the TLS test), PostgreSQL's server binaries (the outbox tests initdb and start their own
# clusters as the packaged `postgres` user). `scripts/install-deps.sh demo` installs only
# what scripts/demo.sh needs: redis-server and redis-cli. Does nothing for what is already
# there.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
case "${1:-tests}" in
  demo) ;;
  tests)
    command -v promtool >/dev/null || need+=(prometheus)
    command -v systemd-analyze >/dev/null || need+=(systemd)
    command -v openssl >/dev/null || need+=(openssl)
    if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      need+=(postgresql)
    fi
    ;;
  *) echo "usage: $0 [tests|demo]" >&2; exit 2 ;;
esac
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
