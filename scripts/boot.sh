#!/usr/bin/env bash
# Boot a built kernel in QEMU, run one command inside, hand back its status.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [options] -- COMMAND...

Boot build/CONFIG/arch/x86/boot/bzImage with build/initramfs.cpio.gz in
QEMU (-accel kvm -cpu host where /dev/kvm works, else TCG with -cpu max,
which emulates AMD SVM with nested paging), run COMMAND with sh in /lazy
inside the VM, and exit with its status.

The host's root is shared read-only over 9p (mount tag hostroot) for the
QEMU scenario (scripts/vmm/run.sh), which runs Debian's QEMU from it.

The kernel console (ttyS0) goes to LOGDIR/console.log, the command's output
(ttyS1) to LOGDIR/output.log and to stdout. The run fails (exit 1) if the
command fails, if the VM does not report an exit status before the timeout
(a hang), or if the console shows a kernel splat: BUG, WARNING, Oops,
KASAN/UBSAN reports, lockdep reports, soft/hard lockups, hung tasks, RCU
stalls, panics.

  --config NAME    kernel build to boot (default: test)
  --kernel FILE    bzImage to boot instead
  --append ARGS    extra kernel command line (e.g. kvm.tdp_mmu=N)
  --logdir DIR     where the logs go (default: out/boot-<time>)
  --timeout SECS   wall-clock limit (default: 1800)
  --mem SIZE       guest memory (default: 6G)
  --smp N          vCPUs (default: 2)
  --tcg-thread T   TCG only: multi (one host thread per vCPU, default) or
                   single (one thread runs all vCPUs in turn)
  --check-log FILE only run the splat check on an existing console log
USAGE
}

cfg="test" kernel="" append="" logdir="" timeout=1800 mem=6G smp=2 tcg_thread=multi
while [ $# -gt 0 ]; do
	case "$1" in
	--config) cfg=${2:?}; shift ;;
	--kernel) kernel=${2:?}; shift ;;
	--append) append=${2:?}; shift ;;
	--logdir) logdir=${2:?}; shift ;;
	--timeout) timeout=${2:?}; shift ;;
	--mem) mem=${2:?}; shift ;;
	--smp) smp=${2:?}; shift ;;
	--tcg-thread) tcg_thread=${2:?}; shift ;;
	--check-log) check_only=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

# Kernel splats: any of these in the console log fails the run.
# Lockdep reports are matched by their titles (most also start with
# WARNING:), not by the word lockdep, which a debug kernel prints at boot.
SPLAT='(^|[^A-Za-z])(BUG:|WARNING:|Oops|general protection fault|Kernel panic|KASAN:|UBSAN:|kernel BUG|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|bad unlock balance|held lock freed|lock held when returning|possible irq lock inversion|INFO: task .* blocked for more than|soft lockup|hard LOCKUP|rcu_.*detected stalls|self-detected stall|Call Trace:|list_add corruption|list_del corruption|ODEBUG)'

check_console() {
	if grep -nE "$SPLAT" "$1" >&2; then
		echo "${0##*/}: kernel splat in $1 (lines above)" >&2
		return 1
	fi
}

if [ -n "${check_only:-}" ]; then
	check_console "$check_only"
	exit
fi
[ $# -gt 0 ] || { usage >&2; exit 2; }
case "$tcg_thread" in
single | multi) ;;
*) die "--tcg-thread wants single or multi, not '$tcg_thread'" ;;
esac

kernel=${kernel:-$BUILD/$cfg/arch/x86/boot/bzImage}
initrd="$BUILD/initramfs.cpio.gz"
[ -r "$kernel" ] || die "no kernel $kernel: run scripts/build-kernel.sh --config $cfg"
[ -r "$initrd" ] || die "no $initrd: run scripts/mkinitramfs.sh"
logdir=${logdir:-$OUT/boot-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$logdir"

# The command travels as a second cpio archive appended to the initramfs.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s\n' "$*" >"$work/cmd"
(cd "$work" && echo cmd | cpio --quiet -o -H newc -R 0:0 | gzip -1 >cmd.cpio.gz)
cat "$initrd" "$work/cmd.cpio.gz" >"$work/initrd"

if [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo; then
	accel=(-accel kvm -cpu host)
else
	accel=(-accel "tcg,thread=$tcg_thread" -cpu max)
	# Tells scripts/vm/run-tests.sh that the guest's SVM is emulated,
	# and scripts/vmm/scenario.py how.
	append="lazy_tcg=1 lazy_tcg_thread=$tcg_thread $append"
fi

: >"$logdir/output.log"
log "booting $kernel (${accel[*]}), logs in $logdir"
tail -n +1 -f "$logdir/output.log" &
tailpid=$!
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 "${accel[@]}" \
	-smp "$smp" -m "$mem" -nographic -no-reboot -nodefaults \
	-kernel "$kernel" -initrd "$work/initrd" \
	-append "console=ttyS0 panic=-1 oops=panic softlockup_panic=0 $append" \
	-serial "file:$logdir/console.log" -serial "file:$logdir/output.log" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-monitor none </dev/null >"$logdir/qemu.log" 2>&1
qrc=$?
set -e
sleep 0.5
kill "$tailpid" 2>/dev/null || true
wait "$tailpid" 2>/dev/null || true

rc=$(sed -n 's/^LAZY-EXIT: \([0-9]*\).*/\1/p' "$logdir/output.log" | tail -n1)
status=0
if [ -z "$rc" ]; then
	echo "${0##*/}: no exit status from the VM (qemu exit $qrc; timeout ${timeout}s): hang or crash, see $logdir/console.log" >&2
	tail -n 30 "$logdir/console.log" >&2 || true
	status=1
elif [ "$rc" != 0 ]; then
	echo "${0##*/}: command exited $rc in the VM" >&2
	status=1
fi
check_console "$logdir/console.log" || status=1
echo "$status" >"$logdir/status"
exit "$status"
