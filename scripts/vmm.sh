#!/usr/bin/env bash
# The QEMU scenario: a real VMM's failed and cancelled live migration.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--modes "MODES"] [--repeat N] [--help]

Build the patched test kernel, the selftests and the initramfs if needed,
boot it in QEMU with the host's root shared read-only over 9p, and run
scripts/tests/vmm.list in each collapse mode: inside the VM, Debian's QEMU (from
that root) boots scripts/vmm/guest.c, which writes and checks all its
memory, and scripts/vmm/scenario.py migrates it over QMP to a receiver
that is killed mid-stream, then migrates it again and cancels, then
cancels and retries at once (the pending collapse must be cancelled), then
lets a migration complete and resumes the paused source with "cont" (QEMU
stops logging inside cont). It checks that each mode collapses when it
should, that pages_2m comes back and that the guest ran on with its memory
intact, and prints the stop time QEMU saw (its longest QMP round trip, or
cont's) next to KVM's collapse time ("qemu-result" lines).
scripts/tests/vmm.list also runs it with --libvirt: a session libvirtd
starts QEMU, and 'virsh dump --live' into a FIFO is the migration, failed
by killing the reader or aborted with 'virsh domjobabort'.
scripts/bench.sh --qemu adds the QEMU runs to the benchmark, on the
unmodified kernel too.
  --modes   collapse modes (default: "sync deferred ondemand")
  --repeat  run the list N times in the same boot (default: 1)
Logs go to out/vmm-<time>/. './run test' runs the same list as its "vmm"
stage. Under TCG the test VM's vCPUs run in one host thread
(boot.sh --tcg-thread single): with one thread per vCPU, QEMU 7.2's
emulation of SVM breaks this nested guest now and then, on the unmodified
kernel too (docs/test-bed.md).
USAGE
}

modes="sync deferred ondemand" repeat=1
while [ $# -gt 0 ]; do
	case "$1" in
	--modes) modes=${2:?}; shift ;;
	--repeat) repeat=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a positive number"
for m in $modes; do
	case "$m" in sync | deferred | ondemand) ;; *) die "--modes: no mode '$m'" ;; esac
done
[ -n "${modes// /}" ] || die "--modes: no mode given"

if [ "$(id -u)" = 0 ]; then
	"$TOP/scripts/install-deps.sh"
fi
"$TOP/scripts/prepare.sh" >/dev/null
"$TOP/scripts/build-kernel.sh" --config test >/dev/null
"$TOP/scripts/build-selftests.sh" >/dev/null
"$TOP/scripts/mkinitramfs.sh" >/dev/null

dir="$OUT/vmm-$(date +%Y%m%d-%H%M%S)"
cmd="st=0"
for _ in $(seq "$repeat"); do
	cmd+="; ./run-tests.sh -m \"$modes\" vmm.list || st=1"
done
cmd+="; exit \$st"
st=0
"$TOP/scripts/boot.sh" --tcg-thread single --timeout $((900 * repeat)) \
	--logdir "$dir" -- "$cmd" \
	>"$dir.log" 2>&1 || st=1
grep -E '^(not )?ok |RETRY|FAIL' "$dir/output.log" || true
grep -h '^qemu-result ' "$dir/output.log" | column -t || true
echo "logs: $dir/ ($dir.log)"
exit "$st"
