#!/usr/bin/env bash
# Release binaries of anonserver and anonclient that run on any x86_64 Linux
# with glibc 2.27 or newer (Ubuntu 18.04 on):
#
#   bash scripts/release.sh
#
# 1. builds them with cargo-zigbuild against glibc 2.27's symbols (Zig and
#    cargo-zigbuild come from PyPI, installed on first use into a virtual
#    environment under target/zig/), in target/zig so the normal build in
#    target/ is left alone;
# 2. copies them to dist/ with a SHA256SUMS;
# 3. checks them: no glibc symbol newer than 2.27 (scripts/check-glibc.sh),
#    --version names the git revision, and one real transfer on 127.0.0.1
#    (the server serves a local file, the client fetches it, the bytes are
#    compared, the server is stopped with SIGINT and must exit 0).
#
# scripts/package.sh then puts dist/'s binaries in the Debian package.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.27
TARGET=x86_64-unknown-linux-gnu
ZIG_DIR=target/zig
VENV=$ZIG_DIR/venv
# Known good together; bump both deliberately.
ZIGLANG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1

say() { printf '\n== %s\n' "$*"; }
die() {
  echo "release: FAILED: $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------
if ! "$VENV/bin/python3" -m ziglang version >/dev/null 2>&1 || [[ ! -x $VENV/bin/cargo-zigbuild ]]; then
  say "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION from PyPI into $VENV"
  command -v python3 >/dev/null || die "python3 is needed (apt-get install python3 python3-venv)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "cannot create a Python virtual environment (apt-get install python3-venv)"
  "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
fi
# cargo-zigbuild runs Zig as `python3 -m ziglang` when no `zig` is on PATH:
# the venv's python3 first.
export PATH="$PWD/$VENV/bin:$PATH"
echo "zig $(python3 -m ziglang version), $(cargo-zigbuild --version)"
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
fi

# --- build -------------------------------------------------------------------
# The revision --version shows, computed here so that it is right even when
# only files outside anon/ changed since the last build (anon/build.rs).
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
  [[ -z $(git --no-optional-locks status --porcelain --untracked-files=no) ]] || rev="$rev-dirty"
else
  rev=unknown
fi
say "building anonserver and anonclient $rev for $TARGET, glibc $GLIBC"
start=$SECONDS
ANON_GIT_REV=$rev CARGO_TARGET_DIR=$ZIG_DIR CARGO_PROFILE_RELEASE_STRIP=debuginfo \
  cargo zigbuild --release --locked -p anon --bins --target "$TARGET.$GLIBC"
echo "built in $((SECONDS - start)) s"

mkdir -p dist
for bin in anonserver anonclient; do
  install -m 0755 "$ZIG_DIR/$TARGET/release/$bin" "dist/$bin"
done
(cd dist && sha256sum anonserver anonclient >SHA256SUMS)
ls -l dist/anonserver dist/anonclient

# --- checks ------------------------------------------------------------------
say "glibc symbol versions"
GLIBC_MAX=$GLIBC bash scripts/check-glibc.sh dist/anonserver dist/anonclient || die "a binary needs a glibc newer than $GLIBC"

say "--version"
for bin in anonserver anonclient; do
  line=$("dist/$bin" --version) || die "$bin --version failed"
  echo "$line"
  [[ $line == "$bin "* && $line == *"$rev"* ]] || die "$bin --version should print '$bin <version> ($rev)', printed '$line'"
done

say "one transfer on 127.0.0.1"
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
head -c 1000000 /dev/urandom >"$work/page.bin"

# A free port is not known in advance: try a few random ones (exit status 3
# is "port in use").
started=false
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 40000))
  RUST_LOG=info dist/anonserver -p "$port" -l "$work/server.log" -w "$work/page.bin" --bind 127.0.0.1 \
    2>"$work/server.err" &
  server_pid=$!
  # Ready once it says "serving"; given up after 20 s, or if it exits.
  # shellcheck disable=SC2016 # expanded by the inner bash
  if timeout 20 bash -c '
      while ! grep -q serving "$1"; do
        kill -0 "$2" 2>/dev/null || exit 1
        sleep 0.05
      done' _ "$work/server.err" "$server_pid"; then
    started=true
    break
  fi
  status=0
  wait "$server_pid" 2>/dev/null || status=$?
  server_pid=""
  [[ $status == 3 ]] || { cat "$work/server.err" >&2; die "anonserver did not start (exit status $status)"; }
done
$started || die "anonserver found no free port"
grep serving "$work/server.err"

timeout 60 dist/anonclient -s 127.0.0.1 -p "$port" -l "$work/client.log" -f "$work/fetched.bin" \
  || die "anonclient failed (exit status $?)"
cmp "$work/page.bin" "$work/fetched.bin" || die "the fetched file differs from the page"
[[ -s $work/client.log ]] || die "the client's packet log is empty"

kill -INT "$server_pid"
# Bounded wait for the server to stop, then its exit status.
timeout 20 tail --pid="$server_pid" -f /dev/null || die "anonserver did not stop within 20 s of SIGINT"
status=0
wait "$server_pid" || status=$?
server_pid=""
[[ $status == 0 ]] || { cat "$work/server.err" >&2; die "anonserver exited with status $status on SIGINT, not 0"; }
[[ -s $work/server.log ]] || die "the server's packet log is empty"
echo "1000000 bytes fetched and identical; server stopped by SIGINT with status 0"

say "release binaries in dist/ ($rev, glibc >= $(bash scripts/check-glibc.sh --print-max dist/anonserver dist/anonclient))"
cat dist/SHA256SUMS
