#!/usr/bin/env bash
# redis-benchmark against the active of a synchronous tandem pair and against a single
# Redis (no replica), side by side in one run, alternating so drift hits both alike.
# Usage: bench/scripts/compare-redis.sh [rounds] [pipeline]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; pipeline=${2:-16}
cargo build --release -q -p engine
dir=$(mktemp -d)
target/release/tandem pair up --dir "$dir" --base-port 7700 --detach >/dev/null
redis-server --port 7790 --save '' --appendonly no --daemonize yes --logfile "$dir/redis.log"
trap 'target/release/tandem pair down --admin 127.0.0.1:7700 >/dev/null 2>&1 || true; redis-cli -p 7790 shutdown nosave >/dev/null 2>&1 || true' EXIT
run() { redis-benchmark -h 127.0.0.1 -p "$1" -t set -P "$pipeline" -n "${requests:-1000000}" -c 50 -d 100 -q 2>/dev/null | tr '\r' '\n' | grep -E '^SET: [0-9]' | tail -1; }
for i in $(seq "$rounds"); do
  echo "round $i tandem (sync pair): $(run 7701)"
  echo "round $i redis (single):     $(run 7790)"
done
target/release/tandem status --admin 127.0.0.1:7700
