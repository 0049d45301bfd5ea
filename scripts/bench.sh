#!/usr/bin/env bash
# Measurements (not part of the test suite): builds in release mode and runs
# anon-bench. Examples:
#   bash scripts/bench.sh throughput --size 10485760
#   bash scripts/bench.sh memory --connections 1000
#   bash scripts/bench.sh crowd --clients 100 --size 1048576
#   bash scripts/bench.sh tftp --size 10485760
# crowd needs nginx and tftp needs tftp-hpa's server and client: they are
# installed here with apt-get when missing (never in CI). The bench runs its
# own instances on free loopback ports; on a machine whose policy lets
# packages start services, the packages' own services start too, as any
# installation of them would.
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
    tftp) need in.tftpd tftpd-hpa; need tftp tftp-hpa ;;
esac

cargo build --release --locked --workspace --bins
exec target/release/anon-bench "$@"
