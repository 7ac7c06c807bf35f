#!/usr/bin/env bash
# The main job: show lazy collapse on a VM, on the patched kernel.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--target T] [--size SIZE] [--upstream] [--zap] [--help]

The benchmark (scripts/bench.sh) on a size that finishes in a few minutes:
install missing dependencies, prepare the kernel tree of target T (7.3,
mainline, the default: linux/; 6.12, the 6.12.y backport: linux-6.12/),
build the patched kernel and the selftests, boot it in QEMU and, in each
collapse mode (sync, deferred,
ondemand), let 2 vCPUs write 2 MiB, 256 MiB and SIZE (default 1G) of
THP-backed memory, log it dirty, fetch the log twice and stop logging, as
a failed migration does. Print the stop time, how soon the huge pages were
back, what the guest paid meanwhile, and where the plots are.
  --target T   7.3 (default) or 6.12
  --upstream   also build and run the unmodified kernel (a cold kernel
               build more: about 15 minutes on 2 cores)
  --zap        6.12 only: also build and run the series without in-place
               recovery (zapping, one TLB flush per region; a cold build too)
Results go to out/demo/.
USAGE
}

size=1G upstream=--no-upstream zap=--no-zap target=$PRIMARY
while [ $# -gt 0 ]; do
	case "$1" in
	--target) target=${2:?}; shift ;;
	--size) size=${2:?}; shift ;;
	--upstream) upstream="" ;;
	--zap) zap="" ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

[[ " $TARGETS " == *" $target "* ]] || die "--target: no target '$target' (targets: $TARGETS)"
[ -n "$zap" ] || [ "$target" = 6.12 ] ||
	die "--zap: the zapping series is 6.12's (7.3 recovers in place unmodified)"

rm -rf "$OUT/demo"
# shellcheck disable=SC2086 # $upstream and $zap are one option or none
"$TOP/scripts/bench.sh" --targets "$target" --sizes "2M 256M $size" --backings thp $upstream $zap \
	--out "$OUT/demo" >"$OUT/demo.log" 2>&1 || {
	tail -n 40 "$OUT/demo.log"
	die "demo failed, logs in $OUT/demo.log and $OUT/demo/"
}
sed -n '/^## anonymous_thp/,$p' "$OUT/demo/results.md"
echo
echo "Full table: $OUT/demo/results.md; plots: $OUT/demo/*.png;"
echo "boot logs: $OUT/demo/$target-patched/. The whole benchmark: scripts/bench.sh."
