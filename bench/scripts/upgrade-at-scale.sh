#!/usr/bin/env bash
# The rolling upgrade at a real state size, under load, side by side with a Redis replica's
# full resync of the same data under the same load, in one run.
#
# tandem: a pair preloaded with N sessions (100-byte payloads), loadgen at RATE req/s (4
# connections, pipeline 64), `tandem upgrade --to 2.0`; per-phase latency from the load
# generator's summary. Redis: a primary with the same N sessions as hashes, the same load,
# then `REPLICAOF` on an empty replica (full resync); per-second latency while it resyncs.
# Usage: bench/scripts/upgrade-at-scale.sh [N] [RATE] [extra tandem pair up flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
units=${1:-1000000}; rate=${2:-10000}; shift 2 || true
cargo build --release -q -p engine -p loadgen
runs=$(mktemp -d /tmp/tandem-scale.XXXX)
port=7940; rport=7990
cleanup() {
  target/release/tandem pair down --dir "$runs/pair" >/dev/null 2>&1 || true
  redis-cli -p $rport shutdown nosave >/dev/null 2>&1 || true
  redis-cli -p $((rport + 1)) shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
preload() { # $1 = command, $2 = port
  python3 - "$units" "$1" <<'PY' | redis-cli -p "$2" --pipe >/dev/null
import sys
n, cmd = int(sys.argv[1]), sys.argv[2]
payload = "x" * 100
out = sys.stdout
for i in range(n):
    if cmd == "tandem":
        args = ["SESSION.OPEN", f"call-{i}", f"sub-{i % 1000}", payload]
    else:
        args = ["HSET", f"session:call-{i}", "subscriber", f"sub-{i % 1000}", "payload", payload]
    out.write(f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args))
PY
}
load() { # $1 = out dir, rest = loadgen flags
  local out=$1; shift
  target/release/loadgen --rate "$rate" --connections 4 --pipeline 64 --quiet --out "$out" "$@"
}
table() { # per-phase latency of a loadgen run
  python3 - "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
print("| phase | ms | ops/s | p50 ms | p99 ms | p99.9 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for p in s["phases"]:
    l = p["latency_us"]
    print(f"| {p['name']} | {p['end_ms'] - p['start_ms']} | {p['throughput_ops_s']:.0f} | "
          f"{l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {l['p999']/1000:.2f} | {l['max']/1000:.2f} |")
print(f"\nacknowledged {s['acknowledged_updates']}, verified {s['verified_updates']}, lost {s['lost_updates']}")
PY
}

echo "== tandem: $units sessions, $rate req/s"
target/release/tandem pair up --dir "$runs/pair" --base-port $port --detach "$@" >/dev/null
t0=$(date +%s.%N); preload tandem $((port + 1))
echo "preloaded in $(echo "$(date +%s.%N) - $t0" | bc) s"
load "$runs/tandem" --target 127.0.0.1:$((port + 1)),127.0.0.1:$((port + 3)) --admin 127.0.0.1:$port \
  --duration 120s --until-upgrade-end --tail 2s &
lg=$!
sleep 2
target/release/tandem upgrade --admin 127.0.0.1:$port --to 2.0 --baseline-ms 5000 --evaluate-ms 5000 --settle-ms 2000 >/dev/null || true
wait $lg || true
table "$runs/tandem"
target/release/tandem pair down --dir "$runs/pair" >/dev/null 2>&1 || true

echo; echo "== Redis: $units sessions as hashes, $rate req/s, REPLICAOF (full resync) under load"
redis-server --port $rport --save '' --appendonly no --daemonize yes --dir "$runs" --dbfilename primary.rdb --logfile "$runs/redis-primary.log"
redis-server --port $((rport + 1)) --save '' --appendonly no --daemonize yes --dir "$runs" --dbfilename replica.rdb --logfile "$runs/redis-replica.log"
until redis-cli -p $((rport + 1)) ping >/dev/null 2>&1; do sleep 0.1; done
preload redis $rport
load "$runs/redis" --redis --target 127.0.0.1:$rport --duration 40s &
lg=$!
sleep 10
t0=$(date +%s%3N)
redis-cli -p $((rport + 1)) replicaof 127.0.0.1 $rport >/dev/null
until redis-cli -p $((rport + 1)) info replication 2>/dev/null | grep -q 'master_link_status:up'; do sleep 0.05; done
t1=$(date +%s%3N)
wait $lg || true
echo "full resync: $((t1 - t0)) ms (REPLICAOF to master_link_status:up)"
python3 - "$runs/redis" "$t0" "$t1" <<'PY'
import json, sys
run, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sl = json.load(open(run + "/slices.json"))["slices"]
def agg(name, xs):
    if not xs: return
    print(f"| {name} | {len(xs)} | {max(x['latency_us']['p50'] for x in xs)/1000:.2f} | "
          f"{max(x['latency_us']['p99'] for x in xs)/1000:.2f} | {max(x['latency_us']['max'] for x in xs)/1000:.2f} |")
print("| window | seconds | worst p50 ms | worst p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
agg("before REPLICAOF", [x for x in sl if x["t_ms"] + 1000 <= t0 and x["t_ms"] >= t0 - 8000])
agg("full resync", [x for x in sl if x["t_ms"] + 1000 > t0 and x["t_ms"] <= t1])
agg("after", [x for x in sl if x["t_ms"] > t1 + 1000])
PY
echo "runs in $runs"
