#!/usr/bin/env bash
# A/B of two builds: an upgrade under 10,000 req/s with N preloaded sessions, the builds alternating,
# 3 rounds; per-phase p50/p99. Usage: OLD=dir/with/tandem NEW=dir/with/tandem bench/scripts/ab-upgrade.sh [N]
# (e.g. OLD=/tmp/old-target/release from `git worktree add` + `CARGO_TARGET_DIR=... cargo build --release`)
set -uo pipefail
units=${1:-200000}
for round in 1 2 3; do
for v in old new; do
  if [ $v = old ]; then bin=${OLD:?set OLD}; else bin=${NEW:-target/release}; fi
  port=$((7700 + round * 10)); dir=$(mktemp -d)
  $bin/tandem pair up --dir "$dir" --base-port $port --detach ${PAIR_FLAGS:-} >/dev/null
  python3 - "$units" <<'PY' | redis-cli -p $((port + 1)) --pipe >/dev/null
import sys
payload = "x" * 100
for i in range(int(sys.argv[1])):
    args = ["SESSION.OPEN", f"call-{i}", f"sub-{i % 1000}", payload]
    sys.stdout.write(f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args))
PY
  $bin/loadgen --rate 10000 --connections 4 --pipeline 64 --quiet --out "$dir/lg" \
    --target 127.0.0.1:$((port + 1)),127.0.0.1:$((port + 3)) --admin 127.0.0.1:$port --duration 60s --until-upgrade-end --tail 1s >/dev/null 2>&1 &
  lg=$!
  sleep 3
  $bin/tandem upgrade --admin 127.0.0.1:$port --to 2.0 >/dev/null 2>&1
  wait $lg
  python3 -c "
import json; s=json.load(open('$dir/lg/summary.json'))
print('$round $v', ' '.join('%s %.2f/%.2f' % (p['name'][:6], p['latency_us']['p50']/1e3, p['latency_us']['p99']/1e3) for p in s['phases']), 'lost', s['lost_updates'])"
  $bin/tandem pair down --dir "$dir" >/dev/null 2>&1; rm -rf "$dir"
done; done
