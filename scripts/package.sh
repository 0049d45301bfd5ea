#!/usr/bin/env bash
# The Debian package of anonserver and anonclient, then checks of it:
#
#   bash scripts/package.sh          # writes dist/anon_VERSION_amd64.deb
#
# The binaries are dist/'s (the glibc 2.27 ones from scripts/release.sh) when
# there are, else a normal release build (which needs the glibc it was built
# with, as its Depends then says). Man pages and shell completions are
# generated from the clap definitions by anon-gendocs; the rest comes from
# packaging/. The package is built with dpkg-deb from a staged tree, then
# checked: every file present with the right mode, the conffile listed, the
# man pages render, the completions and maintainer scripts parse, the systemd
# unit verifies, and the package unpacks (dpkg -x) into a throwaway root
# whose binaries run. Anything missing fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
die() {
  echo "package: FAILED: $*" >&2
  exit 1
}
for tool in dpkg-deb dpkg gzip readelf objdump objcopy md5sum; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install dpkg binutils gzip)"
done

PKG=anon
ARCH=amd64
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
[[ -n $version ]] || die "no version in Cargo.toml's [workspace.package]"
changelog_version=$(sed -n '1s/^anon (\([^)]*\)).*/\1/p' packaging/changelog)
[[ $changelog_version == "$version" ]] ||
  die "packaging/changelog's first entry is for '$changelog_version', Cargo.toml says '$version': add an entry"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- binaries and generated docs ------------------------------------------------
if [[ -x dist/anonserver && -x dist/anonclient ]]; then
  bindir=dist
  say "binaries: dist/ (from scripts/release.sh)"
  if rev=$(git rev-parse --short HEAD 2>/dev/null) && ! dist/anonserver --version | grep -q "$rev"; then
    echo "warning: dist/anonserver is not built from HEAD ($rev): $(dist/anonserver --version); run scripts/release.sh" >&2
  fi
else
  bindir=target/release
  say "binaries: no dist/anonserver and dist/anonclient (scripts/release.sh makes them): a normal release build"
  cargo build --release --locked -p anon --bins
fi
# Debug is enough to print text, and after the tests it is already built.
cargo build --locked -p anon-tools --bin anon-gendocs
target/debug/anon-gendocs "$work/docs" >/dev/null

for bin in anonserver anonclient; do
  readelf -h "$bindir/$bin" | grep -q 'Machine:.*X86-64' || die "$bindir/$bin is not an x86-64 ELF binary"
done

# Depends: from the libraries the binaries need, and the newest glibc symbol
# version they use.
glibc=$(bash scripts/check-glibc.sh --print-max "$bindir/anonserver" "$bindir/anonclient")
depends="libc6 (>= $glibc)"
needed=$(for bin in anonserver anonclient; do readelf -d "$bindir/$bin"; done |
  sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)
for lib in $needed; do
  case $lib in
  libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | ld-linux-x86-64.so.2) ;;
  libgcc_s.so.1) depends="$depends, libgcc-s1 | libgcc1" ;;
  *) die "the binaries need $lib: add the package that has it to Depends in scripts/package.sh" ;;
  esac
done

# --- staged tree ------------------------------------------------------------------
say "staging $PKG $version ($ARCH), Depends: $depends"
root=$work/stage
doc=$root/usr/share/doc/$PKG
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$doc" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d" "$root/lib/systemd/system" "$root/etc/default"
for bin in anonserver anonclient; do
  install -m 0755 "$bindir/$bin" "$root/usr/bin/$bin"
  # Debug information is not shipped (Debian strips it); symbols stay.
  objcopy --strip-debug --remove-section=.comment "$root/usr/bin/$bin"
  install -m 0644 "$work/docs/$bin.1" "$root/usr/share/man/man1/$bin.1"
  gzip -9n "$root/usr/share/man/man1/$bin.1"
  install -m 0644 "$work/docs/$bin.bash" "$root/usr/share/bash-completion/completions/$bin"
  install -m 0644 "$work/docs/_$bin" "$root/usr/share/zsh/vendor-completions/_$bin"
  install -m 0644 "$work/docs/$bin.fish" "$root/usr/share/fish/vendor_completions.d/$bin.fish"
done
install -m 0644 packaging/anonserver.service "$root/lib/systemd/system/anonserver.service"
install -m 0644 packaging/anonserver.default "$root/etc/default/anonserver"
install -d -m 0755 "$root/etc/logrotate.d"
install -m 0644 packaging/anonserver.logrotate "$root/etc/logrotate.d/anonserver"
install -m 0644 packaging/copyright "$doc/copyright"
install -m 0644 packaging/changelog "$doc/changelog"
gzip -9n "$doc/changelog"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/$script" "$root/DEBIAN/$script"
done
printf '%s\n' /etc/default/anonserver /etc/logrotate.d/anonserver >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
  LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: $PKG
Version: $version
Architecture: $ARCH
Maintainer: anon developers <anon@example.invalid>
Installed-Size: $installed_size
Depends: $depends
Section: net
Priority: optional
Homepage: https://example.invalid/anon
Description: serve a web page over a reliable UDP protocol
 anonserver downloads a web page once and serves it over UDP to any number
 of clients at once; anonclient fetches it and writes it to a file. Between
 them runs a reliable transfer protocol that survives loss, duplication,
 delay and reordering, with a fast mode (BBR, selective acknowledgments).
 .
 A systemd service runs anonserver with the arguments in
 /etc/default/anonserver.
EOF
chmod 0644 "$root/DEBIAN/control"
# Same timestamps for the same commit: the package depends on its inputs only.
if epoch=$(git log -1 --format=%ct 2>/dev/null) && [[ -n $epoch ]]; then
  export SOURCE_DATE_EPOCH=$epoch
  find "$root" -exec touch -h -d "@$epoch" {} +
fi

mkdir -p dist
rm -f dist/"${PKG}"_*_"$ARCH".deb
deb=dist/${PKG}_${version}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
say "built $deb ($(du -k "$deb" | cut -f1) KiB)"

# --- checks -------------------------------------------------------------------------
say "checking $deb"
info=$(dpkg-deb -I "$deb")
for field in "Package: $PKG" "Version: $version" "Architecture: $ARCH" "Depends: libc6 (>= "; do
  grep -qF " $field" <<<"$info" || die "dpkg-deb -I: no '$field'"
done
[[ $(dpkg-deb -I "$deb" conffiles) == $'/etc/default/anonserver\n/etc/logrotate.d/anonserver' ]] ||
  die "the conffiles are not /etc/default/anonserver and /etc/logrotate.d/anonserver"
for script in postinst prerm postrm; do
  dpkg-deb -I "$deb" "$script" | sh -n || die "DEBIAN/$script does not parse"
done

listing=$(dpkg-deb -c "$deb")
expect() { # MODE PATH: the entry is in the package, owned by root, with MODE
  grep -qE "^$1 root/root +[0-9]+ [0-9-]+ [0-9:]+ \./${2#/}\$" <<<"$listing" ||
    die "dpkg-deb -c: no $1 root/root $2"
}
for bin in anonserver anonclient; do
  expect -rwxr-xr-x "/usr/bin/$bin"
  expect -rw-r--r-- "/usr/share/man/man1/$bin.1.gz"
  expect -rw-r--r-- "/usr/share/bash-completion/completions/$bin"
  expect -rw-r--r-- "/usr/share/zsh/vendor-completions/_$bin"
  expect -rw-r--r-- "/usr/share/fish/vendor_completions.d/$bin.fish"
done
expect -rw-r--r-- /lib/systemd/system/anonserver.service
expect -rw-r--r-- /etc/default/anonserver
expect -rw-r--r-- /etc/logrotate.d/anonserver
expect -rw-r--r-- "/usr/share/doc/$PKG/copyright"
expect -rw-r--r-- "/usr/share/doc/$PKG/changelog.gz"

unpacked=$work/unpacked
dpkg -x "$deb" "$unpacked" || die "dpkg -x cannot unpack it"
for bin in anonserver anonclient; do
  [[ -x $unpacked/usr/bin/$bin ]] || die "unpacked /usr/bin/$bin is not executable"
  line=$("$unpacked/usr/bin/$bin" --version) || die "unpacked $bin --version failed"
  echo "$line"
  "$unpacked/usr/bin/$bin" --help >/dev/null || die "unpacked $bin --help failed"

  page=$unpacked/usr/share/man/man1/$bin.1.gz
  gzip -t "$page" || die "$bin.1.gz does not decompress"
  gzip -dc "$page" | grep -q "^\.TH $bin 1 " || die "$bin.1.gz has no '.TH $bin 1' line"
  if command -v man >/dev/null; then
    rendered=$(MANWIDTH=80 man --warnings -l "$page" 2>"$work/man.err") || die "man -l $bin.1.gz failed: $(cat "$work/man.err")"
    [[ ! -s $work/man.err ]] || die "man -l $bin.1.gz warns: $(cat "$work/man.err")"
    { grep -q "^NAME" <<<"$rendered" && grep -qE "^ *$bin +- " <<<"$rendered" && grep -q -- "--port" <<<"$rendered"; } ||
      die "man -l $bin.1.gz does not show its NAME and options"
  else
    echo "(man is not installed: checked the .TH line only)"
  fi

  # The bash completion registers itself for the program.
  bash -c 'source "$1" && complete -p "$2"' _ "$unpacked/usr/share/bash-completion/completions/$bin" "$bin" >/dev/null ||
    die "the bash completion of $bin does not load"
  if command -v zsh >/dev/null; then zsh -n "$unpacked/usr/share/zsh/vendor-completions/_$bin" || die "_$bin does not parse"; fi
  if command -v fish >/dev/null; then fish -n "$unpacked/usr/share/fish/vendor_completions.d/$bin.fish" || die "$bin.fish does not parse"; fi
done
grep -q '^ANONSERVER_ARGS=' "$unpacked/etc/default/anonserver" || die "/etc/default/anonserver sets no ANONSERVER_ARGS"
if command -v logrotate >/dev/null; then
  # --debug parses the configuration and rotates nothing.
  logrotate --debug "$unpacked/etc/logrotate.d/anonserver" >"$work/logrotate.out" 2>&1 ||
    die "logrotate --debug: $(cat "$work/logrotate.out")"
  ! grep -qi "error" "$work/logrotate.out" || die "logrotate --debug: $(cat "$work/logrotate.out")"
  echo "logrotate --debug: the configuration parses"
fi

if command -v systemd-analyze >/dev/null; then
  # In the unpacked root, so that ExecStart's /usr/bin/anonserver is there;
  # units it refers to (multi-user.target, ...) are not, hence no recursion.
  if ! out=$(systemd-analyze verify --man=no --recursive-errors=no --root="$unpacked" \
    /lib/systemd/system/anonserver.service 2>&1) || [[ -n $out ]]; then
    die "systemd-analyze verify anonserver.service: $out"
  fi
  echo "systemd-analyze verify: anonserver.service ok"
else
  echo "(systemd-analyze is not installed: the unit is not verified)"
fi

say "$deb ok"
dpkg-deb -c "$deb" | awk '{print $1, $2, $6}'
