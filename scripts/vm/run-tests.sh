#!/bin/sh
# shellcheck shell=dash
# Runs inside the test VM (busybox sh). Usage:
#   run-tests.sh [-m "MODES"] [-f FILTER] LIST...
# Runs every test of the LIST files once per collapse mode and prints KTAP.
# A LIST line is "NAME TIMEOUT COMMAND..." ('#' starts a comment); a NAME
# of the form name@mode[,mode] runs only in those modes. MODES
# defaults to "sync deferred ondemand" when the kernel has
# kvm.collapse_mode, else "-" (an unmodified kernel: run once). FILTER is a
# grep -E pattern on NAME. Exit status: 0 only if no test failed.
# Exit status 4 of a test is the kselftest SKIP. With kmemleak in the
# kernel, one more result: nothing left unreferenced since boot.
#
# Under TCG (lazy_tcg=1 on the kernel command line, set by boot.sh) QEMU's
# emulation of SVM now and then makes a guest triple-fault while it first
# touches its memory (KVM_EXIT_SHUTDOWN), on unmodified kernels too. A test
# that fails with SHUTDOWN in its output is then run again, up to 3 tries
# in all, and every retry is reported; with real virtualisation, never.
# The same emulation also, now and then, leaves a vCPU of a test's guest
# faulting forever at an address in the upper (kernel) half, where no
# selftest guest ever runs: the test hangs. Five seconds before a test's
# TIMEOUT the kvm_exit tracepoint is sampled; if the test then times out
# and the sample shows such guest RIPs, it is retried the same way.
# Either retry is made only if the failed try cannot have reached the
# series' code: no huge page was split (eager splitting, which enabling
# dirty logging does on huge-page-backed memory) and no collapse started
# or ended (cancelled), as a trace instance of this script's own records
# (logging_watch, logging_began). A failure after that is a failure.
param=/sys/module/kvm/parameters/collapse_mode
tcg=0
grep -qw lazy_tcg=1 /proc/cmdline && tcg=1
modes=""
filter=""
while [ $# -gt 0 ]; do
	case "$1" in
	-m) modes=$2; shift 2 ;;
	-f) filter=$2; shift 2 ;;
	-*) echo "run-tests.sh: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "run-tests.sh: no LIST given" >&2; exit 2; }
for f in "$@"; do
	[ -r "$f" ] || { echo "run-tests.sh: no list $f" >&2; exit 2; }
done
if [ -z "$modes" ]; then
	if [ -e $param ]; then modes="sync deferred ondemand"; else modes="-"; fi
fi

# kvm.collapse_* (mode delay batch pause): as they are, and set.
params_now() {
	d=${param%/*}
	echo "$(cat "$d/collapse_mode") $(cat "$d/collapse_delay_ms") $(cat "$d/collapse_batch") $(cat "$d/collapse_pause_pct")"
}
params_set() { # mode delay batch pause
	d=${param%/*}
	echo "$1" >"$d/collapse_mode" && echo "$2" >"$d/collapse_delay_ms" &&
		echo "$3" >"$d/collapse_batch" && echo "$4" >"$d/collapse_pause_pct"
}

# The module parameters as the kernel booted with them, before any test
# or mode changes them (scripts/tests/lazy_collapse.list checks the
# defaults); each test must leave them so, but for the mode its result is
# labelled with.
if [ -e $param ] && [ ! -e /tmp/kvm-boot-params ]; then
	params_now >/tmp/kvm-boot-params
fi

tests=$(cat "$@" | sed -e 's/#.*//' -e '/^[[:space:]]*$/d')
[ -n "$filter" ] && tests=$(echo "$tests" | grep -E "^($filter)(@[^[:space:]]*)?[[:space:]]")
# The tests of one mode, names without their @modes.
tests_for() {
	echo "$tests" | while read -r name rest; do
		[ -n "$name" ] || continue
		case "$name" in
		*@*)
			case ",${name#*@}," in
			*",$1,"*) echo "${name%%@*} $rest" ;;
			esac ;;
		*) echo "$name $rest" ;;
		esac
	done
}

# 0.2 s of kvm_exit events, one line per distinct guest RIP and reason.
sample_exits() {
	t=/sys/kernel/debug/tracing
	[ -d $t/events/kvm/kvm_exit ] || return 0
	echo >$t/trace
	echo 1 >$t/events/kvm/kvm_exit/enable
	sleep 0.2
	echo 0 >$t/events/kvm/kvm_exit/enable
	grep -o 'reason [a-z_0-9]* rip 0x[0-9a-f]*' $t/trace | sort | uniq -c |
		sort -rn
}

# The events that show a test's dirty logging began, in a trace instance
# apart from sample_exits' and from what the tests trace themselves.
ti=/sys/kernel/debug/tracing/instances/lazy-logging
logging_watch() {
	[ "$tcg" = 1 ] || return 0
	[ -d $ti ] || mkdir $ti 2>/dev/null || return 0
	echo 0 >$ti/tracing_on
	echo >$ti/trace
	for e in kvm_mmu_split_huge_page kvm_mmu_collapse_start \
		kvm_mmu_collapse_end; do
		[ ! -e $ti/events/kvmmmu/$e/enable ] ||
			echo 1 >$ti/events/kvmmmu/$e/enable
	done
	echo 1 >$ti/tracing_on
}
# True, printing the first such event, if logging may have begun: also
# when there is no trace instance to prove it did not.
logging_began() {
	[ -d $ti ] || { echo "no trace instance: cannot prove it did not"; return 0; }
	echo 0 >$ti/tracing_on
	grep -v '^#' $ti/trace | grep -m 1 -o 'kvm_mmu_[a-z_]*:.*'
}

# A test past its timeout: print what each of its tasks is doing (state and
# kernel stack), then SIGTERM its process group, and SIGKILL 5 s later.
kill_test() { # label
	pg=$(cat /tmp/pgid 2>/dev/null) || return 0
	echo "# $1: timed out after $tmo s; its tasks (state: kernel stack):"
	for d in /proc/[0-9]*/task/[0-9]*; do
		st=$(cat "$d/stat" 2>/dev/null) || continue
		# After "(comm) ": state, ppid, process group.
		# shellcheck disable=SC2086
		set -- ${st##*) }
		[ "$3" = "$pg" ] || continue
		comm=${st#*(}
		echo "#   ${d##*/} ${comm%%)*} $1: $(sed -e 's/^\[<[0-9a-f]*>\] //' \
			-e 's/+0x[0-9a-f]*\/0x[0-9a-f]*$//' "$d/stack" 2>/dev/null |
			head -n 10 | tr '\n' ' ')"
	done
	kill -TERM "-$pg" 2>/dev/null
	sleep 5
	kill -KILL "-$pg" 2>/dev/null
}

n=0
for m in $modes; do
	n=$((n + $(tests_for "$m" | grep -c .)))
done
# A filter or mode that matches nothing is an error, not an empty pass.
if [ "$n" = 0 ]; then
	echo "KTAP version 1"
	echo "1..1"
	echo "not ok 1 no test of $* in modes '$modes' matches '$filter'"
	exit 1
fi

# With kmemleak (the debug kernel), one more result: nothing was left
# unreferenced since boot. Checked once, after the last test: a scan takes
# some 25 s on the debug kernel under TCG, and the boot itself leaves
# nothing (measured). Two scans: kmemleak reports an object that stayed
# unchanged over a scan.
kml=/sys/kernel/debug/kmemleak
kmemleak_scan() { echo scan >$kml && echo scan >$kml; }
leakcheck=0
[ ! -w $kml ] || leakcheck=1

echo "KTAP version 1"
echo "1..$((n + leakcheck))"
i=0
failed=0
for m in $modes; do
	if [ "$m" != "-" ]; then
		echo "$m" >$param || { echo "# cannot set collapse_mode=$m"; exit 1; }
		suffix=" [$m]"
	else
		suffix=""
	fi
	while read -r name tmo cmd; do
		[ -n "$name" ] || continue
		i=$((i + 1))
		echo "# $name$suffix: $cmd"
		start=$(date +%s)
		try=1
		while :; do
			# busybox sh has no PIPESTATUS: the status goes through a file.
			rm -f /tmp/rc /tmp/exits /tmp/pgid
			logging_watch
			# Under TCG, what the guest exits for just before the
			# timeout; at the timeout, what the test's tasks are doing,
			# then the test's process group is killed; a test still
			# there 30 s later is stuck in the kernel: its stack and
			# the CPUs' go to the console.
			{
				if [ "$tcg" = 1 ] && [ "$tmo" -gt 10 ]; then
					sleep $((tmo - 5))
					sample_exits >/tmp/exits
					sleep 5
				else
					sleep "$tmo"
				fi
				kill_test "$name$suffix"
				sleep 30
				echo "# $name$suffix: still running 30 s after it was killed: blocked tasks and CPU backtraces (SysRq w, l) in the console log"
				echo w >/proc/sysrq-trigger
				echo l >/proc/sysrq-trigger
			} &
			watch=$!
			{
				# Its own session and process group, so that a timeout
				# kills its children too: our tests run each subtest
				# in a child, which a signal to the parent alone would
				# leave running, and holding this pipe open.
				# shellcheck disable=SC2016
				setsid sh -c 'echo $$ >/tmp/pgid; exec sh -c "$1"' sh "$cmd" 2>&1 </dev/null
				echo $? >/tmp/rc
			} | tee /tmp/out | sed 's/^/# /'
			kill "$watch" 2>/dev/null
			wait "$watch" 2>/dev/null
			rc=$(cat /tmp/rc 2>/dev/null || echo 255)
			why=""
			if [ "$tcg" = 1 ] && grep -q SHUTDOWN /tmp/out; then
				why="guest triple fault (SHUTDOWN)"
			elif [ "$tcg" = 1 ] && [ "$rc" -ge 124 ] &&
				grep -q 'rip 0xffff' /tmp/exits 2>/dev/null; then
				why="timeout, guest stuck at $(grep -o 'rip 0xffff[0-9a-f]*' /tmp/exits | sort | uniq -c | sort -rn | head -n 1)"
			fi
			if [ "$rc" -ge 124 ] && [ -s /tmp/exits ]; then
				sed 's/^/# exits: /' /tmp/exits | head -n 5
			fi
			if [ -n "$why" ] && [ "$rc" != 0 ] && [ "$rc" != 4 ] &&
				ev=$(logging_began); then
				echo "# $name$suffix: no retry ($why): dirty logging had begun: $ev"
				why=""
			fi
			if [ "$rc" = 0 ] || [ "$rc" = 4 ] || [ "$try" -ge 3 ] ||
				[ -z "$why" ]; then
				break
			fi
			try=$((try + 1))
			echo "# $name$suffix: RETRY: $why under TCG, try $try of 3"
		done
		echo "# $name$suffix: exit $rc after $(($(date +%s) - start)) s"
		# Ours run subtests in one binary: one that skipped makes the
		# test a SKIP (which CI counts as a failure), not a pass.
		case "$name" in
		lazy_collapse*)
			if [ "$rc" = 0 ] && grep -qE '^ok [0-9]+ .*# SKIP' /tmp/out; then
				echo "# $name$suffix: a subtest skipped"
				rc=4
			fi ;;
		esac
		if [ "$m" != "-" ]; then
			want="$m $(cut -d' ' -f2- /tmp/kvm-boot-params)"
			now=$(params_now)
			if [ "$now" != "$want" ]; then
				echo "# $name$suffix: FAIL: left kvm.collapse_* (mode delay batch pause) at '$now', not '$want'; restored"
				# shellcheck disable=SC2086
				params_set $want
				[ "$rc" != 0 ] && [ "$rc" != 4 ] || rc=1
			fi
		fi
		case "$rc" in
		0) echo "ok $i $name$suffix" ;;
		4) echo "ok $i $name$suffix # SKIP" ;;
		*) echo "not ok $i $name$suffix"; failed=$((failed + 1)) ;;
		esac
	done <<-TESTS
	$(tests_for "$m")
	TESTS
done
if [ "$leakcheck" = 1 ]; then
	i=$((i + 1))
	# Past kmemleak's minimum age of what it reports (5 s).
	sleep 6
	if ! kmemleak_scan; then
		echo "# kmemleak: scan failed (kmemleak=off, or disabled after an error?)"
		echo "not ok $i kmemleak: nothing leaked since boot"
		failed=$((failed + 1))
	elif grep -q '^unreferenced object' $kml; then
		echo "# kmemleak: $(grep -c '^unreferenced object' $kml) objects leaked; the first:"
		head -n 60 $kml | sed 's/^/# /'
		echo "not ok $i kmemleak: nothing leaked since boot"
		failed=$((failed + 1))
	else
		echo "ok $i kmemleak: nothing leaked since boot"
	fi
fi
[ "$failed" = 0 ]
