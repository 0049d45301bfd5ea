#!/usr/bin/env bash
# Checks that ELF binaries need no glibc symbol version newer than a limit
# (2.27 by default, Ubuntu 18.04's glibc; GLIBC_MAX=2.31 to change it).
#
#   scripts/check-glibc.sh BIN...              fails listing every symbol newer
#                                              than the limit; prints the
#                                              newest version each binary needs
#   scripts/check-glibc.sh --print-max BIN...  prints only the newest version
#                                              all of them need (e.g. 2.27)
#
# Reads the versions of the dynamic symbols with objdump -T (binutils).
set -euo pipefail

limit=${GLIBC_MAX:-2.27}
print_max=false
if [[ ${1:-} == --print-max ]]; then
  print_max=true
  shift
fi
if [[ $# -eq 0 ]]; then
  echo "usage: $0 [--print-max] BIN..." >&2
  exit 2
fi
command -v objdump >/dev/null || { echo "check-glibc: objdump not found (apt-get install binutils)" >&2; exit 2; }

# Is version $1 newer than $2? (both like 2.27 or 2.2.5)
newer() { [[ $1 != "$2" && $(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n1) == "$1" ]]; }

overall=""
failed=0
for bin in "$@"; do
  if [[ ! -f $bin ]]; then
    echo "check-glibc: $bin: no such file" >&2
    exit 2
  fi
  # "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.2.5) memcpy":
  # one "VERSION SYMBOL" line per versioned glibc symbol (parentheses or
  # not, as binutils versions differ).
  if ! table=$(objdump -T "$bin" 2>&1); then
    echo "check-glibc: $bin: cannot read its dynamic symbols: $table" >&2
    exit 2
  fi
  pairs=$(awk '{
      for (i = 1; i <= NF; i++) {
        v = $i; gsub(/[()]/, "", v)
        if (v ~ /^GLIBC_/) { print substr(v, 7), $NF; break }
      }
    }' <<<"$table" | sort -u)
  if [[ -z $pairs ]]; then
    echo "$bin: needs no versioned glibc symbol"
    continue
  fi
  max=""
  bad=()
  while read -r version symbol; do
    if [[ ! $version =~ ^[0-9]+(\.[0-9]+)*$ ]]; then
      bad+=("$symbol (GLIBC_$version)") # GLIBC_PRIVATE: no stable interface
      continue
    fi
    if [[ -z $max ]] || newer "$version" "$max"; then max=$version; fi
    if newer "$version" "$limit"; then bad+=("$symbol (GLIBC_$version)"); fi
  done <<<"$pairs"
  if [[ -n $max ]] && { [[ -z $overall ]] || newer "$max" "$overall"; }; then overall=$max; fi
  $print_max && continue
  if [[ ${#bad[@]} -gt 0 ]]; then
    echo "$bin: FAIL: ${#bad[@]} symbol(s) newer than GLIBC_$limit (newest needed: GLIBC_$max):" >&2
    printf '  %s\n' "${bad[@]}" >&2
    failed=1
  else
    echo "$bin: ok: newest glibc symbol version needed is GLIBC_$max (limit GLIBC_$limit)"
  fi
done

if $print_max; then
  echo "${overall:-0}"
  exit 0
fi
exit "$failed"
