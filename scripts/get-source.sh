#!/usr/bin/env bash
# Fetch the kernel source package of TARGET, installing nothing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: [TARGET=T] ${0##*/} [--help]

Make sure the source tarball of target T ($TARGETS; default $PRIMARY) is
there. 6.12: Debian 12's linux-source-6.12, installed by
scripts/install-deps.sh. 7.3: linux-source-7.3 from Debian's
trixie-backports suite, which this Debian 12 does not carry: apt-get reads
that suite with a private sources list and package lists in build/src/apt/,
downloads the package (Architecture: all) and dpkg-deb -x unpacks it into
build/src/; the system's apt sources, lists and packages are not touched.
The version used is recorded in build/src/linux-source-7.3.version.
Prints the tarball's path.
USAGE
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

if [ -r "$SRC_TARBALL" ]; then
	echo "$SRC_TARBALL"
	exit 0
fi
[ -n "$SRC_SUITE" ] || die "$SRC_TARBALL missing: run scripts/install-deps.sh"

src="$TOP/build/src"
apt="$src/apt"
rm -rf "$apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
cat >"$apt/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SRC_SUITE main
EOF
opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
	-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
	-o Dir::State::status=/dev/null -o Debug::NoLocking=1
	-o APT::Sandbox::User=root)
log "reading $SRC_SUITE's package list (private: $apt)"
apt-get "${opts[@]}" -qq update
ver=$(apt-cache "${opts[@]}" show "$SRC_PKG" 2>/dev/null |
	awk '/^Version: / { print $2; exit }')
[ -n "$ver" ] || die "$SRC_PKG: not in $SRC_SUITE"
log "downloading $SRC_PKG $ver"
(cd "$apt" && apt-get "${opts[@]}" -qq download "$SRC_PKG=$ver")
deb=$(find "$apt" -maxdepth 1 -name "${SRC_PKG}_*.deb" | head -n 1)
[ -n "$deb" ] || die "$SRC_PKG: download failed"
dpkg-deb -x "$deb" "$src"
rm -rf "$apt"
[ -r "$SRC_TARBALL" ] || die "$deb has no ${SRC_TARBALL#"$src"/}"
echo "$ver" >"$src/$SRC_PKG.version"
log "$SRC_PKG $ver: $SRC_TARBALL"
echo "$SRC_TARBALL"
