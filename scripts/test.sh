#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property,
# simulation, end to end). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
cargo test --locked --workspace
# The Wireshark dissector against a real capture (CI installs tshark).
if command -v tshark >/dev/null 2>&1; then
  bash wireshark/test.sh target/debug
elif [[ -n ${ANON_REQUIRE_TSHARK:-} ]]; then
  echo "tshark is not installed, and ANON_REQUIRE_TSHARK is set" >&2
  exit 1
else
  echo "wireshark/test.sh skipped: tshark is not installed" >&2
fi
