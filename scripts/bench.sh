#!/usr/bin/env bash
# Measurements (not part of the test suite): builds in release mode and runs
# anon-bench. Examples:
#   bash scripts/bench.sh throughput --size 10485760
#   bash scripts/bench.sh memory --connections 1000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
exec target/release/anon-bench "$@"
