#!/usr/bin/env bash
# A default `tandem demo` (rolling upgrade under load) and the same workload against a Redis
# primary + replica with `WAIT 1 0` after every write, one after the other on this machine,
# then both reports side by side: `tandem demo --peer redis` does all of it (it starts and
# stops the Redis servers itself; redis-server from `apt-get install redis-server`).
# The tandem run is in runs_dir, the Redis run in runs_dir/peer-redis, the comparison in
# runs_dir/compare-peer-redis.html.
# Usage: bench/scripts/demo-vs-redis.sh [runs_dir] [extra tandem demo flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-tandem-runs/compare-$(date +%s)}; shift || true
cargo build --release -q -p engine
rm -rf "$runs"
exec target/release/tandem demo --out "$runs" --rate 10000 --peer redis "$@"
