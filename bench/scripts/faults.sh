#!/usr/bin/env bash
# What the faults of RELIABILITY.md cost under load (figures for bench/RESULTS.md):
#   hung-active   SIGSTOP of the active under an open-loop load: the supervisor's detection
#                 and takeover (its log), and what the load generator saw (client gap)
#   hung-standby  SIGSTOP of the standby: the longest write stall
#   durability    a 10 s simplex window (an upgrade held in b_out_of_service) under a
#                 closed-loop load, --simplex-durability journal vs memory, side by side
#   window        the simplex windows of a quick upgrade under load
# usage: bench/scripts/faults.sh [rounds] [rate_ops_s] [section...]   (default: all four)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
rate=${2:-5000}
sections=" ${*:3} "
[ "$sections" = "  " ] && sections=" hung-active hung-standby durability window "
want() { [[ "$sections" == *" $1 "* ]]; }
cargo build --release -q -p engine -p loadgen
T=$PWD/target/release/tandem
L=$PWD/target/release/loadgen
work=$(mktemp -d /tmp/tandem-faults.XXXXXX)
export TANDEM_SECRET_FILE=$work/secret
trap 'for d in "$work"/pair-*; do [ -d "$d" ] && "$T" pair down --dir "$d" >/dev/null 2>&1; done; rm -rf "$work"' EXIT

json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

up() { # dir [flags...]
  local dir=$1; shift
  "$T" pair up --dir "$dir" --base-port 0 --detach "$@" >/dev/null
  admin=$(json "$dir/pair.json" "d['admin']")
  targets=$(json "$dir/pair.json" "','.join(e['client_addr'] for e in d['engines'])")
}

pid_of() { # role
  "$T" status --admin "$admin" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print([e['pid'] for e in s['engines'] if e['role']=='$1'][0])"
}

if want hung-active; then
reply_timeout=${REPLY_TIMEOUT:-1s}
echo "## hung active: SIGSTOP of the active at $rate req/s (loadgen --reply-timeout $reply_timeout)"
for r in $(seq "$rounds"); do
  dir=$work/pair-ha$r; up "$dir"
  "$L" --target "$targets" --admin "$admin" --rate "$rate" --duration 8s --reply-timeout "$reply_timeout" --out "$work/ha$r" --quiet >/dev/null 2>&1 &
  lg=$!
  sleep 3
  victim=$(pid_of active)
  kill -STOP "$victim"
  sleep 3
  kill -CONT "$victim"
  wait $lg || true
  detect=$(grep -o 'answered no lease for [0-9]* ms' "$dir/supervisor.log" | head -1 | grep -o '[0-9]*')
  promote=$(grep -o 'promoted at epoch [0-9]* in [0-9.]* ms' "$dir/supervisor.log" | head -1 | awk '{print $6}')
  gap=$(json "$work/ha$r/summary.json" "[s['client_gap_ms'] for s in d['switchovers'] if s['kind']=='failover'][0]")
  lost=$(json "$work/ha$r/summary.json" "d['lost_updates']")
  echo "round $r: detected after $detect ms, promoted in $promote ms; client gap $gap ms; lost $lost"
  "$T" pair down --admin "$admin" >/dev/null
done
fi

if want hung-standby; then
echo "## hung standby: SIGSTOP of the standby at $rate req/s"
for r in $(seq "$rounds"); do
  dir=$work/pair-hs$r; up "$dir"
  "$L" --target "$targets" --admin "$admin" --rate "$rate" --duration 8s --out "$work/hs$r" --quiet >/dev/null 2>&1 &
  lg=$!
  sleep 3
  victim=$(pid_of standby)
  kill -STOP "$victim"
  sleep 3
  kill -CONT "$victim"
  wait $lg || true
  json "$work/hs$r/summary.json" "'round $r: longest write stall (max latency) %.0f ms, p99.9 %.0f ms; lost %d' % (d['phases'][0]['latency_us']['max']/1e3, d['phases'][0]['latency_us']['p999']/1e3, d['lost_updates'])"
  "$T" pair down --admin "$admin" >/dev/null
done
fi

if want durability; then
echo "## durability of a 10 s simplex window: closed loop, 8 connections x pipeline 16"
for r in $(seq "$rounds"); do
  for mode in journal memory; do
    dir=$work/pair-d$mode$r; up "$dir" --simplex-durability $mode
    "$L" --target "$targets" --admin "$admin" --closed 8 --pipeline 16 --duration 60s \
      --until-upgrade-end --out "$work/d$mode$r" --quiet >/dev/null 2>&1 &
    lg=$!
    sleep 1
    "$T" upgrade --admin "$admin" --to 2.0 --baseline-ms 5000 --evaluate-ms 2000 --settle-ms 500 \
      --hold-phase b_out_of_service --hold-ms 10000 >/dev/null || true
    wait $lg || true
    json "$work/d$mode$r/summary.json" "'round $r %-7s: ' % '$mode' + '; '.join('%s %.0f ops/s p50 %.2f ms p99 %.2f ms' % (p['name'], p['throughput_ops_s'], p['latency_us']['p50']/1e3, p['latency_us']['p99']/1e3) for p in d['phases'] if p['name'] in ('baseline','b_out_of_service'))"
    "$T" pair down --admin "$admin" >/dev/null
  done
done
fi

if want window; then
echo "## simplex windows of a quick upgrade (tandem demo --quick)"
for r in $(seq "$rounds"); do
  "$T" demo --quick --out "$work/demo$r" >/dev/null
  json "$work/demo$r/summary.json" "'round $r: %d ms in %d windows: ' % (d['simplex_ms'], len(d['simplex_windows'])) + ', '.join('%s %d ms' % (p['name'], p['simplex_ms']) for p in d['phases'] if p['simplex_ms'])"
done
fi
