#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the codec and extension
# negotiation (codec), the server endpoint (server), the client state
# machine (client), and secure mode: the secure server's silence to what does
# not authenticate (secure_server), its handshake and sealed-datagram parsers
# behind valid layers (secure_handshake), and the secure client
# (secure_client); each for SECONDS (default 20). A crash fails the script;
# its input is saved under fuzz/artifacts/TARGET/ and belongs in a regression
# test (sim/tests/scripted.rs).
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-20}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(codec server client secure_server secure_handshake secure_client)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo-fuzz passes -Z sanitizer flags; the machine's one toolchain is stable.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E "^Done|stat::number_of_executed_units|stat::peak_rss|cov:|SUMMARY|panicked|ERROR" | tail -6
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "fuzz target $t failed; see fuzz/artifacts/$t/" >&2; exit 1; }
done
