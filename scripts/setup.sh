#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: redis-server (the peer in
# benchmarks and `tandem demo --peer redis`), redis-tools (redis-cli, redis-benchmark),
# chromium (the report is opened in a real browser), etcd-server (the fleet's witness and
# campaign memory) and redis-py (the client tests).
set -euo pipefail
need=()
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# redis-py, the most used Redis client library, for the client tests (engine/tests/clients).
if ! python3 -c "import redis" >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  python3 -m pip install --quiet --disable-pip-version-check redis 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages redis
fi
