#!/usr/bin/env bash
# redis-benchmark SET against the active of a synchronous tandem pair (every reply waits for
# the standby's ack), against a Redis primary with an asynchronous replica (the replica is
# sent the writes, the reply does not wait), and against a single Redis, side by side in one
# run, alternating so that drift hits all alike.
# Usage: bench/scripts/compare-redis.sh [rounds] [pipeline] [extra tandem pair up flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; pipeline=${2:-16}; shift 2 || true
cargo build --release -q -p engine
dir=$(mktemp -d)
target/release/tandem pair up --dir "$dir" --base-port 7700 --detach "$@" >/dev/null
redis() { redis-server --port "$1" --save '' --appendonly no --daemonize yes --dir "$dir" --dbfilename "$1.rdb" --logfile "$dir/redis-$1.log" "${@:2}"; }
redis 7790
redis 7791
redis 7792 --replicaof 127.0.0.1 7791
trap 'target/release/tandem pair down --dir "$dir" >/dev/null 2>&1 || true; for p in 7790 7791 7792; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done' EXIT
until redis-cli -p 7792 info replication 2>/dev/null | grep -q 'master_link_status:up'; do sleep 0.1; done
run() { redis-benchmark -h 127.0.0.1 -p "$1" -t set -P "$pipeline" -n "${requests:-1000000}" -c 50 -d 100 -q 2>/dev/null | tr '\r' '\n' | grep -E '^SET: [0-9]' | tail -1; }
for i in $(seq "$rounds"); do
  echo "round $i tandem (sync pair):          $(run 7701)"
  echo "round $i redis + async replica:       $(run 7791)"
  echo "round $i redis (single, no replica):  $(run 7790)"
done
echo "replica offset: $(redis-cli -p 7792 info replication | grep -E 'slave_repl_offset|master_repl_offset' | tr -d '\r' | tr '\n' ' ')"
target/release/tandem status --admin "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$dir/pair.json")"
