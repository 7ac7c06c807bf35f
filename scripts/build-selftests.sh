#!/usr/bin/env bash
# Build the KVM selftests of linux/ (ours included) against its headers.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--help]

Check that linux/ holds this repository's selftests (scripts/sync-selftests.sh
--check; ./run sync puts them there, amending the selftest patch: a build
never rewrites linux/'s history), install the UAPI headers of linux/ into
build/headers/ and build
tools/testing/selftests/kvm into build/kselftest/kvm/ with the kernel's own
kselftest Makefile. Environment: JOBS (default: nproc).
USAGE
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

[ -d "$LINUX" ] || die "no $(tree_name): run TARGET=$TARGET scripts/prepare.sh"
"$TOP/scripts/sync-selftests.sh" --check >&2 ||
	die "linux/ does not hold the selftests of $(basename "$TOP")/tools/testing/selftests/kvm: run ./run sync"

hdr="$BUILD/headers"
mkdir -p "$hdr"
log "installing UAPI headers into $hdr"
make -s -C "$LINUX" O="$hdr" headers >/dev/null

out="$BUILD/kselftest/kvm"
mkdir -p "$out"
cc="gcc"
command -v ccache >/dev/null && cc="ccache gcc"
log "building KVM selftests into $out"
make -s -C "$LINUX/tools/testing/selftests/kvm" -j"$JOBS" \
	CC="$cc" OUTPUT="$out" KHDR_INCLUDES="-isystem $hdr/usr/include" >/dev/null
echo "$out"
