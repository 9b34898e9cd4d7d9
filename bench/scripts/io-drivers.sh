#!/usr/bin/env bash
# The replication link's two drivers end to end: a fresh synchronous pair per run (`tandem
# pair up --io tokio|uring`), redis-benchmark SET against its active once the standby is in
# sync, then the pair down. The drivers alternate, and swap which goes first every round, so
# that drift on a shared machine hits both alike. Prints SET/s per driver per round.
# Usage: bench/scripts/io-drivers.sh [rounds] [requests]
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}; requests=${2:-500000}
cargo build --release -q -p engine
tandem=${CARGO_TARGET_DIR:-target}/release/tandem
work=$(mktemp -d)
admin=
down() {
  if [ -n "$admin" ]; then
    "$tandem" --secret-file "$work/secret" pair down --admin "$admin" >/dev/null 2>&1 || true
    admin=
  fi
}
trap 'down; rm -rf "$work"' EXIT

status() { "$tandem" --secret-file "$work/secret" status --admin "$admin" --json; }

# Starts a pair on OS-chosen ports and waits (20 s at most) for its standby to be in sync.
up() {
  local dir=$work/pair-$1-$2
  admin=$("$tandem" --secret-file "$work/secret" pair up --dir "$dir" --base-port 0 \
    --io "$1" --detach | sed -n 's/.*, admin \([^;]*\);.*/\1/p')
  [ -n "$admin" ] || { echo "pair up --io $1 gave no admin address" >&2; exit 1; }
  for _ in $(seq 200); do
    if status | jq -e '.standby_promotable and any(.engines[]; .role == "standby" and .in_sync)' \
      >/dev/null; then
      return
    fi
    sleep 0.1
  done
  echo "the standby of the --io $1 pair is not in sync after 20 s; see $dir" >&2
  exit 1
}

run() {
  local io=$1 round=$2 active
  up "$io" "$round"
  active=$(status | jq -r '.engines[] | select(.role == "active") | .client_addr')
  printf 'round %s %-6s %s\n' "$round" "$io" "$(redis-benchmark -h "${active%:*}" -p "${active##*:}" \
    -t set -P 16 -c 50 -d 100 -n "$requests" -q 2>/dev/null | tr '\r' '\n' | grep -E '^SET: [0-9]' | tail -1)"
  down
}

echo "redis-benchmark -t set -P 16 -c 50 -d 100 -n $requests -q, against the active of a synchronous pair"
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then order="tokio uring"; else order="uring tokio"; fi
  for io in $order; do run "$io" "$round"; done
done
