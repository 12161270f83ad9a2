#!/usr/bin/env bash
# Runs every test: unit, property, capture, end-to-end and fault tests against real
# redis-server processes (single servers, a Redis Cluster, Sentinels) and PostgreSQL clusters
# that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo test --locked "$@"
