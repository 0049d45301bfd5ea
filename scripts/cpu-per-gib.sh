#!/usr/bin/env bash
# CPU time per GiB on loopback, for the server and the client, from one run
# of each: the server's user+system time from /proc across the transfers,
# the client's from its rusage, and the client's process time (spawn to
# exit) beside them.
#   bash scripts/cpu-per-gib.sh [BIN_DIR] [MIB] [RUNS]
# BIN_DIR holds anonserver and anonclient (default: target/release).
set -euo pipefail
bin=${1:-target/release}
mib=${2:-1024}
runs=${3:-3}
work=$(mktemp -d)
server_pid=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
head -c $((mib << 20)) /dev/urandom >"$work/page"
port=$((20000 + RANDOM % 20000))
"$bin/anonserver" -p "$port" -l "$work/server.log" -w "$work/page" --bind 127.0.0.1 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 300); do grep -q serving "$work/server.err" 2>/dev/null && break; sleep 0.1; done
grep -q serving "$work/server.err" || { cat "$work/server.err"; exit 1; }
tck=$(getconf CLK_TCK)
cpu_of() { awk -v t="$tck" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
printf '%-4s %10s %10s %10s %14s %14s\n' run "process s" "client s" "server s" "client CPU/GiB" "server CPU/GiB"
for r in $(seq "$runs"); do
  before=$(cpu_of "$server_pid")
  rm -f "$work/out"
  /usr/bin/time -f '%e %U %S' -o "$work/time" "$bin/anonclient" -s 127.0.0.1 -p "$port" -l "$work/client.log" -f "$work/out" --quiet
  after=$(cpu_of "$server_pid")
  cmp -s "$work/out" "$work/page" || { echo "run $r: the file differs from the page" >&2; exit 1; }
  read -r wall user sys <"$work/time"
  awk -v r="$r" -v w="$wall" -v u="$user" -v s="$sys" -v b="$before" -v a="$after" -v g="$(awk -v m="$mib" 'BEGIN{print m/1024}')" \
    'BEGIN { printf "%-4s %10.3f %10.2f %10.2f %14.2f %14.2f\n", r, w, u+s, a-b, (u+s)/g, (a-b)/g }'
done
