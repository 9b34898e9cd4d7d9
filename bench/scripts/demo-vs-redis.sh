#!/usr/bin/env bash
# A default `tandem demo` (rolling upgrade under load) and the same workload against a Redis
# primary + replica with `WAIT 1 0` after every write, one after the other on this machine,
# then both reports side by side.
# Usage: bench/scripts/demo-vs-redis.sh [runs_dir] [extra tandem demo flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-tandem-runs/compare-$(date +%s)}; shift || true
cargo build --release -q -p engine -p loadgen
rm -rf "$runs"; mkdir -p "$runs"; runs=$(cd "$runs" && pwd)
rate=10000
start=$(date +%s)
target/release/tandem demo --out "$runs/tandem" --rate $rate "$@"
seconds=$(( $(date +%s) - start ))
port=7990
redis-server --port $port --save '' --appendonly no --daemonize yes --dir "$runs" --dbfilename primary.rdb --logfile "$runs/redis-primary.log"
redis-server --port $((port + 1)) --save '' --appendonly no --daemonize yes --replicaof 127.0.0.1 $port --dir "$runs" --dbfilename replica.rdb --logfile "$runs/redis-replica.log"
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; redis-cli -p $((port + 1)) shutdown nosave >/dev/null 2>&1 || true' EXIT
until redis-cli -p $((port + 1)) info replication | grep -q 'master_link_status:up'; do sleep 0.1; done
target/release/loadgen --redis --wait --target 127.0.0.1:$port,127.0.0.1:$((port + 1)) \
  --rate $rate --connections 4 --pipeline 64 --duration "${seconds}s" --out "$runs/redis-wait" --quiet
target/release/tandem report "$runs/redis-wait" >/dev/null
target/release/tandem report "$runs/tandem" --compare "$runs/redis-wait"
