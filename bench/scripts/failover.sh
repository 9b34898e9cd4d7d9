#!/usr/bin/env bash
# Unplanned failover under load: SIGKILL of the active while the load generator runs;
# reports the supervisor's detection-to-promotion time and the client-visible write gap,
# and checks that nothing acknowledged was lost. Usage: bench/scripts/failover.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
cargo build --release -q -p engine -p loadgen
port=7960
for r in $(seq "$rounds"); do
  dir=$(mktemp -d)
  target/release/tandem pair up --dir "$dir" --base-port $port --detach >/dev/null
  target/release/loadgen --target 127.0.0.1:$((port + 1)),127.0.0.1:$((port + 3)) --admin 127.0.0.1:$port \
    --rate 5000 --duration 10s --out "$dir/run" --quiet >/dev/null 2>&1 &
  load=$!
  sleep 4
  pid=$(target/release/tandem status --admin 127.0.0.1:$port --json | python3 -c 'import json,sys; print([e["pid"] for e in json.load(sys.stdin)["engines"] if e["role"]=="active"][0])')
  kill -9 "$pid"
  wait $load || true
  python3 - "$dir" "$r" <<'PY'
import json, sys, re
d, r = sys.argv[1], sys.argv[2]
s = json.load(open(f"{d}/run/summary.json"))
log = open(f"{d}/supervisor.log").read()
m = re.search(r"promoted at epoch \d+ in ([\d.]+) ms", log)
gaps = [w["client_gap_ms"] for w in s["switchovers"] if w["kind"] == "failover"]
print(f"round {r}: promotion {m.group(1) if m else '?'} ms after the exit was seen, client-visible gap {gaps[0] if gaps else '?'} ms, "
      f"{s['acknowledged_updates']} acknowledged, {s['lost_updates']} lost")
PY
  target/release/tandem pair down --admin 127.0.0.1:$port >/dev/null 2>&1 || true
  sleep 1
done
