#!/usr/bin/env bash
# Idle catch-up by state size: a pair preloaded with N sessions (100-byte payloads), its
# standby killed (SIGKILL); the supervisor restarts it and it takes a snapshot. Prints the new
# standby's own line ("snapshot complete ... MB in ms (MB/s)") and its resident memory.
# Usage: bench/scripts/catch-up.sh [N...]   (default: 10000 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p engine
port=7920
[ $# -gt 0 ] || set -- 10000 100000 1000000
for units in "$@"; do
  dir=$(mktemp -d)
  target/release/tandem pair up --dir "$dir" --base-port $port --detach ${PAIR_FLAGS:-} >/dev/null
  python3 - "$units" <<'PY' | redis-cli -p $((port + 1)) --pipe >/dev/null
import sys
payload = "x" * 100
for i in range(int(sys.argv[1])):
    args = ["SESSION.OPEN", f"call-{i}", f"sub-{i % 1000}", payload]
    sys.stdout.write(f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args))
PY
  status() { target/release/tandem status --admin 127.0.0.1:$port --json; }
  pid=$(status | python3 -c 'import json,sys; print([e["pid"] for e in json.load(sys.stdin)["engines"] if e["role"]=="standby"][0])')
  standby=$(status | python3 -c 'import json,sys; print([e["name"] for e in json.load(sys.stdin)["engines"] if e["role"]=="standby"][0])')
  lines=$(grep -c "snapshot complete" "$dir/$standby.log" || true)
  kill -9 "$pid"
  until [ "$(grep -c "snapshot complete" "$dir/$standby.log" || true)" -gt "$lines" ]; do sleep 0.05; done
  new=$(status | python3 -c 'import json,sys; print([e["pid"] for e in json.load(sys.stdin)["engines"] if e["name"]=="'"$standby"'"][0])')
  rss=$(awk '/VmRSS/ {print $2 / 1024 " MB"}' /proc/"$new"/status)
  echo "$units work units: $(grep "snapshot complete" "$dir/$standby.log" | tail -1 | sed 's/^.*verified at [0-9]*: //; s/ engine=.*$//'); standby RSS $rss"
  target/release/tandem pair down --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
done
