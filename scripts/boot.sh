#!/usr/bin/env bash
# Boot a built kernel in QEMU, run one command inside, hand back its status.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [options] -- COMMAND...

Boot build/TARGET/CONFIG/arch/x86/boot/bzImage with build/TARGET/initramfs.cpio.gz
(TARGET: scripts/lib.sh, default 7.3) in
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
  --append ARGS    extra kernel command line (e.g. kvm.tdp_mmu=N); a kernel
                   built with KASAN, and every 7.3 kernel, also gets no5lvl
                   (see below)
  --logdir DIR     where the logs go (default: out/boot-<time>)
  --timeout SECS   wall-clock limit (default: 1800)
  --idle SECS      a hang: no new output from the command for SECS (default:
                   600); the VM's registers go to LOGDIR/hang-registers.txt
                   and an NMI makes its kernel panic with a dump of CPUs,
                   blocked tasks and held locks in console.log, then QEMU
                   is stopped
  --mem SIZE       guest memory (default: 6G)
  --smp N          vCPUs (default: 2)
  --tcg-thread T   TCG only: multi (one host thread per vCPU, default) or
                   single (one thread runs all vCPUs in turn)
  --check-log FILE only run the splat check on an existing console log
USAGE
}

cfg="test" kernel="" append="" logdir="" timeout=1800 idle=600 mem=6G smp=2 tcg_thread=multi
while [ $# -gt 0 ]; do
	case "$1" in
	--config) cfg=${2:?}; shift ;;
	--kernel) kernel=${2:?}; shift ;;
	--append) append=${2:?}; shift ;;
	--logdir) logdir=${2:?}; shift ;;
	--timeout) timeout=${2:?}; shift ;;
	--idle) idle=${2:?}; shift ;;
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
for v in "$timeout" "$idle"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || die "--timeout and --idle want seconds, not '$v'"
done
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
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	local rc=$?
	[ -z "${qpid:-}" ] || kill "$qpid" 2>/dev/null || true
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
printf '%s\n' "$*" >"$work/cmd"
(cd "$work" && echo cmd | cpio --quiet -o -H newc -R 0:0 | gzip -1 >cmd.cpio.gz)
cat "$initrd" "$work/cmd.cpio.gz" >"$work/initrd"

# A KASAN kernel boots with 4-level paging: identify_cpu() clears
# boot_cpu_data's capabilities, LA57's too, with interrupts on; for that
# moment pgtable_l5_enabled() is false, KASAN_SHADOW_START moves, and an
# interrupt reading a per-CPU variable (in the 5-level direct map) gets a
# bogus "wild-memory-access" report (seen once here, under -cpu max).
if grep -qx 'CONFIG_KASAN=y' "$(dirname "$kernel")/../../../.config" 2>/dev/null; then
	append="no5lvl $append"
fi
# What the target's kernel always needs here (scripts/lib.sh: 7.3's
# selftest guests and 5-level paging).
[ -z "$BOOT_APPEND" ] || [[ " $append " == *" $BOOT_APPEND "* ]] ||
	append="$BOOT_APPEND $append"

if [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo; then
	accel=(-accel kvm -cpu host)
else
	accel=(-accel "tcg,thread=$tcg_thread" -cpu max)
	# Tells scripts/vm/run-tests.sh that the guest's SVM is emulated,
	# and scripts/vmm/scenario.py how.
	append="lazy_tcg=1 lazy_tcg_thread=$tcg_thread $append"
	# One host thread for all vCPUs: QEMU 7.2 now and then runs a nested
	# guest for tens of seconds without returning to the test VM, whose
	# vCPUs all freeze; when they run again the soft-lockup detector
	# reports the jump in time at the VMRUN return of KVM_RUN (the
	# console also shows "Long readout interval", the clocksource
	# watchdog noticing the same gap; docs/test-bed.md). The detector
	# stays on, reporting stalls over 2 minutes instead of 20 s.
	[ "$tcg_thread" = multi ] || append="watchdog_thresh=60 $append"
fi

: >"$logdir/output.log"
log "booting $kernel (${accel[*]}), logs in $logdir"
tail -n +1 -f "$logdir/output.log" &
tailpid=$!
# On a hang the monitor socket gets the registers and an NMI, which
# unknown_nmi_panic turns into a panic that panic_print fills with the
# backtraces of all CPUs (0x40), held locks (0x08) and blocked tasks (0x80).
monitor() { # HMP command: prints its answer
	python3 - "$work/mon" "$1" <<'PY' 2>/dev/null || true
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
def upto_prompt():
    buf = b""
    while not buf.endswith(b"(qemu) "):
        data = s.recv(1 << 16)
        if not data:
            break
        buf += data
    return buf.decode(errors="replace")
upto_prompt()
s.sendall(sys.argv[2].encode() + b"\n")
out = upto_prompt()
# HMP echoes the command line first, with terminal escapes.
sys.stdout.write(out.split("\n", 1)[-1].rsplit("(qemu) ", 1)[0].replace("\r", ""))
PY
}
# A reset (the VM's own reboot at the end, a panic, or a triple fault)
# pauses the VM instead of ending QEMU, so that a reset nobody asked for
# leaves its registers: the loop below saves them and quits QEMU.
timeout -k 10 "$timeout" qemu-system-x86_64 "${accel[@]}" \
	-smp "$smp" -m "$mem" -nographic -nodefaults \
	-action reboot=shutdown,shutdown=pause \
	-d cpu_reset -D "$logdir/qemu-reset.log" \
	-kernel "$kernel" -initrd "$work/initrd" \
	-append "console=ttyS0 panic=-1 oops=panic softlockup_panic=0 unknown_nmi_panic panic_print=0xc8 $append" \
	-serial "file:$logdir/console.log" -serial "file:$logdir/output.log" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-monitor "unix:$work/mon,server=on,wait=off" </dev/null >"$logdir/qemu.log" 2>&1 &
qpid=$!
# The watchdog: the command's output must move at least every $idle s.
# The VM is asked whether it has shut down (paused by its own reset) when
# the command has reported its status, when QEMU logged a triple fault,
# and every 10 s of silence.
last=$(date +%s) size=0 hung=0 asked=$last reset=""
while kill -0 "$qpid" 2>/dev/null; do
	sleep 1
	now=$(date +%s) cur=$(stat -c %s "$logdir/output.log")
	if grep -q '^LAZY-EXIT:' "$logdir/output.log" ||
		grep -qs 'Triple fault' "$logdir/qemu-reset.log" ||
		[ $((now - asked)) -ge 10 ]; then
		asked=$now
		if monitor "info status" | grep -q shutdown; then
			if ! grep -q '^LAZY-EXIT:' "$logdir/output.log"; then
				reset="the VM reset itself"
				if grep -qs 'Triple fault' "$logdir/qemu-reset.log"; then
					reset+=" (QEMU: triple fault)"
				fi
				monitor "info registers -a" >"$logdir/reset-registers.txt"
				echo "${0##*/}: $reset before the command reported its status; registers in reset-registers.txt" >&2
			fi
			monitor quit >/dev/null
			# QEMU quits before answering: the loop ends.
			continue
		fi
	fi
	if [ "$cur" != "$size" ]; then
		size=$cur last=$now
	elif [ $((now - last)) -ge "$idle" ]; then
		hung=1
		echo "${0##*/}: no output for ${idle}s: registers to hang-registers.txt, NMI for a dump" >&2
		monitor "info registers -a" >"$logdir/hang-registers.txt"
		monitor nmi >/dev/null
		# panic=-1: the VM resets, which pauses it, once the dump is out.
		for _ in $(seq 60); do
			sleep 1
			! monitor "info status" | grep -q shutdown || break
		done
		monitor quit >/dev/null
		sleep 1
		kill "$qpid" 2>/dev/null || true
		break
	fi
done
set +e
wait "$qpid"
qrc=$?
set -e
sleep 0.5
kill "$tailpid" 2>/dev/null || true
wait "$tailpid" 2>/dev/null || true

rc=$(sed -n 's/^LAZY-EXIT: \([0-9]*\).*/\1/p' "$logdir/output.log" | tail -n1)
status=0
if [ -z "$rc" ]; then
	why="qemu exit $qrc; timeout ${timeout}s"
	[ "$hung" = 0 ] || why="no output for ${idle}s"
	[ -z "$reset" ] || why=$reset
	echo "${0##*/}: no exit status from the VM ($why): hang or crash, see $logdir/console.log" >&2
	tail -n 30 "$logdir/console.log" >&2 || true
	status=1
elif [ "$rc" != 0 ]; then
	echo "${0##*/}: command exited $rc in the VM" >&2
	status=1
fi
check_console "$logdir/console.log" || status=1
# The test kernel has no kallsyms: name the code addresses of a failed
# boot's backtraces (and of the registers of a reset) from its System.map,
# in console-symbols.log (reset-registers-symbols.txt).
map="$(dirname "$kernel")/../../../System.map"
symbols() { # in out
	python3 - "$map" "$1" >"$2" <<'PY' || true
import bisect, re, sys
syms = []
for line in open(sys.argv[1]):
    addr, kind, name = line.split()[:3]
    if kind in "tTwW":
        syms.append((int(addr, 16), name))
syms.sort()
keys = [a for a, _ in syms]
def name(m, short=False):
    a = int(m.group(0), 16)
    i = bisect.bisect_right(keys, a) - 1
    if i < 0 or a - keys[i] > 0x100000:
        return m.group(0)
    if short:
        return syms[i][1]
    return "%s <%s+0x%x>" % (m.group(0), syms[i][1], a - keys[i])
addr = re.compile(r"\b(0x)?ffffffff[0-9a-f]{8}\b")
# run-tests.sh's stacks of a test it killed: the names alone.
task = re.compile(r"^#   [0-9]+ \S+ \S: ")
for line in open(sys.argv[2], errors="replace"):
    short = bool(task.match(line))
    sys.stdout.write(addr.sub(lambda m: name(m, short), line))
PY
}
if [ "$status" != 0 ] && [ -r "$map" ]; then
	symbols "$logdir/console.log" "$logdir/console-symbols.log"
	symbols "$logdir/output.log" "$logdir/output-symbols.log"
	if [ -s "$logdir/reset-registers.txt" ]; then
		symbols "$logdir/reset-registers.txt" "$logdir/reset-registers-symbols.txt"
		grep -E '^(CPU#|RIP|CR0)' "$logdir/reset-registers-symbols.txt" |
			sed "s/^/${0##*/}: reset: /" >&2 || true
	fi
fi
echo "$status" >"$logdir/status"
exit "$status"
