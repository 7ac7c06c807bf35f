#!/usr/bin/env bash
# The main job: show lazy collapse on a VM, on the patched kernel.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--size SIZE] [--help]

Install missing dependencies, prepare linux/, build the patched kernel and
the selftests, boot it in QEMU and, in each collapse mode (sync, deferred,
ondemand), run a VM with a SIZE slot (default 1G) of THP-backed memory:
populate it with huge pages, enable dirty logging, dirty everything, stop
logging. Print the time of the stopping ioctl against a 2MiB slot, and the
huge page count before logging, while logging and after the collapse.
Logs go to out/demo/.
USAGE
}

size=1G
while [ $# -gt 0 ]; do
	case "$1" in
	--size) size=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

[ "$(id -u)" != 0 ] || "$TOP/scripts/install-deps.sh"
mkdir -p "$OUT/demo"
"$TOP/scripts/prepare.sh"
"$TOP/scripts/build-kernel.sh" --config test
"$TOP/scripts/build-selftests.sh"
"$TOP/scripts/mkinitramfs.sh"
cmd="for m in sync deferred ondemand; do echo \$m >/sys/module/kvm/parameters/collapse_mode;"
cmd+=" ./x86_64/lazy_collapse_test -t stoptime -t restore -b $size -s anonymous_thp || exit 1; done"
"$TOP/scripts/boot.sh" --logdir "$OUT/demo" -- "$cmd" >"$OUT/demo/run.log" 2>&1 ||
	{ tail -n 40 "$OUT/demo/run.log"; die "demo failed, logs in $OUT/demo"; }

echo
echo "Stopping dirty logging on a 2MiB and a $size slot (median of 5), per mode:"
grep -o 'stoptime \[.*' "$OUT/demo/output.log"
echo
echo "Huge pages of the $size slot (deferred: after collapse_delay_ms;"
echo "ondemand: none back until collapse_now):"
grep -o 'restore \[.*' "$OUT/demo/output.log"
echo
echo "Kernel console: $OUT/demo/console.log, VM output: $OUT/demo/output.log"
