#!/usr/bin/env bash
# Measurements (not part of the test suite): builds in release mode and runs
# anon-bench. Examples:
#   bash scripts/bench.sh throughput --size 10485760
#   bash scripts/bench.sh memory --connections 1000
#   bash scripts/bench.sh crowd --clients 100 --size 1048576
# crowd needs nginx: it is installed here with apt-get when missing (never
# in CI). The bench runs its own instance on a free loopback port; on a
# machine whose policy lets packages start services, the package's own
# service starts too, as any installation of it would.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs Debian package $2 unless command $1 is there.
need() {
    command -v "$1" >/dev/null && return
    echo "bench.sh: installing $2 for $1" >&2
    apt-get install -y --no-install-recommends "$2" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$2" >/dev/null; }
}
case "${1:-}" in
    crowd) need nginx nginx; need curl curl ;;
esac

cargo build --release --locked --workspace --bins
exec target/release/anon-bench "$@"
