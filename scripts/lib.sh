# shellcheck shell=bash
# Common settings for the scripts in this directory; sourced, never run.

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LINUX="${LINUX:-$TOP/linux}"
BUILD="${BUILD:-$TOP/build}"
OUT="${OUT:-$TOP/out}"
SRC_TARBALL="${SRC_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"
JOBS="${JOBS:-$(nproc)}"
# Tag of the pristine base commit in linux/.
export BASE_TAG=base

die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

log() {
	echo "==> $*" >&2
}

# Version of the Debian source package the tree was made from.
source_version() {
	dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown
}
