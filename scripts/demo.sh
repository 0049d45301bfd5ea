#!/usr/bin/env bash
# The main job end to end on this machine, no internet needed: a local page is
# served by anonserver and fetched by several concurrent anonclients; every file
# is verified and a summary printed. Extra arguments go to the demo
# (e.g. --clients 20 --size 5000000; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --workspace --bins
exec target/release/anon-demo "$@"
