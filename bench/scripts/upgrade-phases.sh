#!/usr/bin/env bash
# Duration of each upgrade phase and switchover, from the pair's timeline, for a pair that
# holds N work units (sessions with a 100-byte payload).
# Usage: bench/scripts/upgrade-phases.sh [work_units] [extra tandem upgrade flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
units=${1:-100000}; shift || true
cargo build --release -q -p engine
dir=$(mktemp -d)
port=7900
target/release/tandem pair up --dir "$dir" --base-port $port --detach >/dev/null
trap 'target/release/tandem pair down --admin 127.0.0.1:$port >/dev/null 2>&1 || true' EXIT
payload=$(printf 'x%.0s' $(seq 100))
python3 - "$units" "$payload" <<'PY' | redis-cli -p $((port + 1)) --pipe >/dev/null
import sys
n, payload = int(sys.argv[1]), sys.argv[2]
out = sys.stdout
for i in range(n):
    args = ["SESSION.OPEN", f"call-{i}", f"sub-{i % 1000}", payload]
    out.write(f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args))
PY
target/release/tandem status --admin 127.0.0.1:$port
target/release/tandem upgrade --admin 127.0.0.1:$port --to 2.0 --baseline-ms 1000 --evaluate-ms 1000 --settle-ms 500 "$@" >/dev/null || true
python3 - "$dir/timeline.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
start = {}
print("| phase | duration ms |\n| --- | ---: |")
for e in t["events"]:
    if e["kind"] == "phase_start": start[e["phase"]] = e["t_ms"]
    if e["kind"] == "phase_end": print(f"| {e['phase']} | {e['t_ms'] - start[e['phase']]} |")
for e in t["events"]:
    if e["kind"] == "switchover_end": print(f"| switchover ({e['switchover']}) step-up | {e['stepup_ms']:.1f} |")
    if e["kind"] == "upgrade_end": print(f"\noutcome: {e['outcome']} {e.get('message') or ''}")
PY
target/release/tandem status --admin 127.0.0.1:$port
