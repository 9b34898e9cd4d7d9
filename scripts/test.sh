#!/usr/bin/env bash
# The test command: install what the tests need, then run every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --release
