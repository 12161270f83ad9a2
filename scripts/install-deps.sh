#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: redis-server and redis-cli (the
# tests start their own servers on free ports; the scale-out tests also run them as a Redis
# Cluster, made with `redis-cli --cluster create`, and as sentinels, `redis-server
# --sentinel`, so no other package is needed), promtool (checks /metrics and the alert
# rules), systemd-analyze (checks the unit file), openssl (makes a throwaway certificate for
# the TLS test), PostgreSQL's server binaries (the outbox tests initdb and start their own
# clusters as the packaged `postgres` user), and Valkey 8 (`valkey-server`, `valkey-cli`) from
# Debian's backports beside Redis, for the suite's second run (scripts/test.sh): the backports
# suite is added to apt's sources, on the same mirror the machine's Debian sources use. Python 3
# with venv and curl run scripts/api-check.sh (schemathesis itself comes from PyPI, pinned,
# into a virtual environment under target/).
# `scripts/install-deps.sh demo` installs only what scripts/demo.sh needs: redis-server and
# redis-cli. Does nothing for what is already there.
set -euo pipefail
need=()
backports=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
case "${1:-tests}" in
  demo) ;;
  tests)
    command -v valkey-server >/dev/null || backports+=(valkey-server)
    command -v valkey-cli >/dev/null || backports+=(valkey-tools)
    command -v promtool >/dev/null || need+=(prometheus)
    command -v systemd-analyze >/dev/null || need+=(systemd)
    command -v openssl >/dev/null || need+=(openssl)
    if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
      need+=(postgresql)
    fi
    command -v curl >/dev/null || need+=(curl)
    command -v python3 >/dev/null || need+=(python3)
    python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
    ;;
  *) echo "usage: $0 [tests|demo]" >&2; exit 2 ;;
esac
if [ ${#need[@]} -eq 0 ] && [ ${#backports[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ ${#backports[@]} -gt 0 ] && ! grep -rqs -- "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # The mirror of the machine's own Debian sources (deb822 or one-line format).
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$mirror" ]; then
    mirror=$(awk -v c="$codename" '$1 == "deb" && $3 == c { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  fi
  if [ -z "$codename" ] || [ -z "$mirror" ]; then
    echo "cannot tell this machine's Debian release and mirror to add ${codename:-its}-backports for ${backports[*]}" >&2
    exit 1
  fi
  printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" "$codename" | $sudo tee /etc/apt/sources.list.d/eslstream-backports.sources >/dev/null
fi
echo "installing: ${need[*]} ${backports[*]}" >&2
$sudo apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ${#backports[@]} -gt 0 ]; then
  $sudo apt-get install -y -qq --no-install-recommends -t "${codename}-backports" "${backports[@]}" >/dev/null
fi
