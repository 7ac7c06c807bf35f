#!/usr/bin/env bash
# The test command: build everything, boot, run all suites, count results.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
each_target_its_own

# The stages, in their default order; each is defined here and only here:
# NAME|TARGET|CONFIG|DEFAULT|BOOT ARGUMENTS|TEST LISTS|DESCRIPTION.
# TARGET: the kernel (scripts/lib.sh): the full matrix runs on the primary
# target, mainline 7.3; the 6.12.y backport gets its series checked and our
# tests run on the TDP MMU (series-6.12, tdp-6.12).
# DEFAULT "no": run only when asked for (--stage). A series stage (CONFIG -)
# boots nothing. The series checks and kernel builds run one after another
# in the background, niced; a stage boots as soon as its kernel is built,
# one at a time while builds go on, two at a time after, ready stages in
# this order (the longest first); under TCG each VM runs all its vCPUs in
# one host thread (docs/test-bed.md), so a VM takes one core.
STAGES=(
	'series|7.3|-|yes|||checkpatch, patches/7.3/ == linux/, every patch builds (check-series.sh)'
	'series-6.12|6.12|-|yes|||checkpatch, patches/6.12/ == linux-6.12/, every patch builds'
	'tdp|7.3|test|yes|hugepagesz=1G hugepages=2|upstream.list lazy_collapse.list|TDP MMU: upstream dirty-log and memslot tests, and ours, in every mode'
	'debug|7.3|debug|yes||lazy_collapse_debug.list debug-upstream.list|KASAN, lockdep, kmemleak, ... (boot.sh adds no5lvl): our tests in every mode (but those of debug1g), upstream dirty-log and memslot tests'
	'tdp-6.12|6.12|test|yes|hugepagesz=1G hugepages=2|lazy_collapse.list|6.12.y, TDP MMU: our tests in every mode'
	'vmm|7.3|test|yes||vmm.list|a real VMM: Debian QEMU (the host root over 9p) migrates a guest, the migration fails, is cancelled, retried or resumed, over QMP in every mode and through libvirt in deferred mode (scripts/vmm/scenario.py)'
	'debug1g|7.3|debug|yes|hugepagesz=1G hugepages=2|lazy_collapse_debug_1g.list|debug kernel: our 1 GiB tests, and resume and teardown, in every mode'
	'debug-shadow|7.3|debug|yes|kvm.tdp_mmu=N|lazy_collapse_debug_shadow.list|debug kernel, shadow MMU (rmap walk): our tests in every mode'
	'shadow|7.3|test|yes|kvm.tdp_mmu=N|lazy_collapse_shadow.list|shadow MMU (rmap walk): our tests in every mode'
	'npt0|7.3|test|yes|kvm_amd.npt=0 kvm_intel.ept=0|lazy_collapse_shadow.list|shadow paging (the shadow MMU shadows the guest page tables): our tests in every mode'
	'modules|7.3|modules|no|lazy_modules=@MODULES@|modules.list|KVM built as modules (scripts/configs/modules.config, another cold kernel build), loaded over 9p (scripts/vm/kvm-modules.sh): in every mode'
)
declare -A S_TARGET S_CONFIG S_APPEND S_LISTS S_WHAT
ALL_STAGES="" KNOWN_STAGES=""
for row in "${STAGES[@]}"; do
	IFS='|' read -r name tgt cfg dflt append lists what <<<"$row"
	S_TARGET[$name]=$tgt S_CONFIG[$name]=$cfg S_APPEND[$name]=$append
	S_LISTS[$name]=$lists S_WHAT[$name]=$what
	KNOWN_STAGES+="${KNOWN_STAGES:+ }$name"
	[ "$dflt" = no ] || ALL_STAGES+="${ALL_STAGES:+ }$name"
done

usage() {
	cat <<USAGE
Usage: ${0##*/} [--stage NAME]... [--target T] [--modes "MODES"] [--filter REGEX] [--help]

Install missing dependencies, prepare the kernel tree of each target the
stages need (scripts/prepare.sh: linux/ for 7.3, linux-6.12/ for 6.12), then
run the stages (default: $ALL_STAGES;
the others only with --stage):
$(for n in $KNOWN_STAGES; do
	printf '  %-12s ' "$n"
	{ [ "${S_CONFIG[$n]}" = - ] || printf '[%s %s kernel%s%s] ' "${S_TARGET[$n]}" "${S_CONFIG[$n]}" \
		"${S_APPEND[$n]:+, booted with ${S_APPEND[$n]}}" \
		"${S_LISTS[$n]:+; scripts/tests/: ${S_LISTS[$n]}}"
	  echo "${S_WHAT[$n]}"; } | fold -s -w 63 | sed 's/ *$//; 2,$s/^/               /'
done)
The series checks and kernel builds run one after another, niced; each
stage boots as soon as its kernel is built: one VM at a time while builds
go on, two after, ready stages in the order above. Under TCG each VM runs
its vCPUs in one host thread: with one thread per vCPU QEMU's emulation of
nested SVM corrupts guests now and then.
Every test is a KTAP result; each boot adds one more: the VM exited by
itself with no kernel splat in its console log; a boot of a kernel with
kmemleak (debug) one more: nothing left unreferenced since boot. With
CI=true a SKIP of one of our tests (lazy_collapse_*) counts as a failure.
  --target  only the stages of target T (7.3 or 6.12), default or not (but
            modules); with --stage: of those
  --modes   collapse modes to run (default: "sync deferred ondemand")
  --filter  only the tests whose whole name (as in scripts/tests/*.list)
            matches this grep -E regex, e.g. 'lazy_collapse_(races|smm)'
Logs and results go to out/test-<time>/ (out/latest links to it). The last
line is "N passed, N failed, N skipped"; the exit status is 0 only if no
test failed.
USAGE
}

stages=() modes="sync deferred ondemand" filter="" only_target=""
while [ $# -gt 0 ]; do
	case "$1" in
	--stage) stages+=("${2:?}"); shift ;;
	--target) only_target=${2:?}; shift ;;
	--modes) modes=${2:?}; shift ;;
	--filter) filter=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
# --target alone: every stage of that target but modules.
if [ "${#stages[@]}" -eq 0 ] && [ -n "$only_target" ]; then
	for s in $KNOWN_STAGES; do [ "$s" = modules ] || stages+=("$s"); done
fi
[ "${#stages[@]}" -gt 0 ] || read -r -a stages <<<"$ALL_STAGES"
# Bad arguments fail now, before anything is installed or built.
for s in "${stages[@]}"; do
	[[ " $KNOWN_STAGES " == *" $s "* ]] ||
		die "--stage $s: no such stage (stages: $KNOWN_STAGES)"
done
if [ -n "$only_target" ]; then
	[[ " $TARGETS " == *" $only_target "* ]] ||
		die "--target $only_target: no such target (targets: $TARGETS)"
	kept=()
	for s in "${stages[@]}"; do
		[ "${S_TARGET[$s]}" != "$only_target" ] || kept+=("$s")
	done
	[ "${#kept[@]}" -gt 0 ] || die "--target $only_target: none of the stages is for it"
	stages=("${kept[@]}")
fi
for m in $modes; do
	case "$m" in sync | deferred | ondemand) ;; *) die "--modes: no mode '$m'" ;; esac
done
[ -n "${modes// /}" ] || die "--modes: no mode given"

res="$OUT/test-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$res"
ln -sfn "$res" "$OUT/latest"
results="$res/results.ktap"
failures="$res/failures.txt"
: >"$results"
start=$(date +%s)

# Record one KTAP line per result: status (ok/not ok/skip), name.
record() {
	case "$1" in
	ok) echo "ok - $2" ;;
	skip) echo "ok - $2 # SKIP" ;;
	*) echo "not ok - $2" ;;
	esac >>"$results"
}

# Why each test of a log failed, a line each: NAME<TAB>WHY, WHY being the
# first assertion (file:line: expression, and its message) or FAIL: line of
# the test's output, else its last line. Summary lines must stay short.
why_failed() { # log
	tr -d '\r' <"$1" | awk '
	function strip(s) { sub(/^[#[:space:]]+/, "", s); return s }
	/^(not )?ok [0-9]+ / {
		if ($1 == "not") {
			name = $0; sub(/^not ok [0-9]+ /, "", name)
			sub(/ # .*$/, "", name)
			print name "\t" (why != "" ? why : strip(last))
		}
		why = ""; after = 0; next
	}
	after && /pid=[0-9]+ tid=|\(stack trace|^[#[:space:]]*0x[0-9a-f]+: / { next }
	after { why = why " | " strip($0); after = 0; next }
	why == "" && /[A-Za-z0-9_.\/-]+\.c:[0-9]+: / && !/ at [^ ]+:[0-9]+/ {
		why = strip($0); after = 1; next
	}
	why == "" && /FAIL: / { why = strip($0) }
	NF { last = $0 }'
}

# Fold the top-level KTAP results of a log into the results.
collect() { # log prefix
	local line name plan=0 seen=0 n w
	local -A why=()
	while IFS=$'\t' read -r n w; do
		why[$n]=${w:0:300}
	done < <(why_failed "$1")
	while IFS= read -r line; do
		case "$line" in
		1..*) plan=$((plan + ${line#1..})); continue ;;
		"ok "*" # SKIP"*)
			name=${line#ok * }; name=${name%% # SKIP*}
			if [ "${CI:-}" = true ] && [[ $name == lazy_collapse* ]]; then
				record fail "$2$name (skipped in CI)"
			else
				record skip "$2$name"
			fi ;;
		"ok "*) name=${line#ok * }; record ok "$2$name" ;;
		"not ok "*)
			name=${line#not ok * }; record fail "$2$name"
			[ -z "${why[$name]:-}" ] ||
				echo "# why: ${why[$name]}" >>"$results" ;;
		esac
		seen=$((seen + 1))
	done < <(tr -d '\r' <"$1" | grep -E '^((not )?ok [0-9]+ |1\.\.[0-9]+$)' || true)
	# A script that dies half-way must not pass by printing fewer results.
	if [ "$seen" -lt "$plan" ]; then
		record fail "$2$((plan - seen)) of $plan planned results missing"
	fi
	# The last lines each failed test printed, for the summary: CI shows
	# only the tail of the output. Kernel addresses named, where boot.sh
	# could (output-symbols.log).
	local out=$1
	[ ! -s "${1%.log}-symbols.log" ] || out=${1%.log}-symbols.log
	awk '/^(not )?ok [0-9]+ / {
		if ($1 == "not") {
			print "# --- " $0
			for (i = (n > 12 ? n - 12 : 0); i < n; i++) print buf[i % 12]
		}
		n = 0; next
	}
	{ buf[n % 12] = $0; n++ }' "$out" >>"$failures"
}

# What a VM that hung, crashed or splatted left, in a few lines for the
# summary: the verdict, the test it was running, the first kernel splat
# lines and the end of its console.
boot_failure() { # name
	local d="$res/$1"
	# Under pipefail: boot.sh --check-log and grep fail when they find
	# a splat or nothing; neither may end the run.
	echo "# --- $1: the VM hung, crashed or printed a kernel splat"
	{ grep -hE 'boot.sh:' "$res/$1.log" || true; } | grep -v 'lines above' |
		head -n 8 | sed 's/^/# /' || true
	# run-tests.sh names each test on the line after the plan or a result.
	tr -d '\r' <"$d/output.log" | awk 'p { if (/^# /) last = $0; p = 0 }
		/^(not )?ok [0-9]+ |^1\.\.[0-9]+$/ { p = 1 }
		END { if (last != "") print "# last test started: " substr(last, 3) }' || true
	{ "$TOP/scripts/boot.sh" --check-log "$d/console.log" 2>&1 || true; } |
		grep -v 'lines above' | tr -d '\r' | head -n 4 |
		sed 's/^/# console: /' || true
	# The stacks and held locks of a hang's or crash's dump, one line
	# each; the console's last lines when it has none.
	local log=$d/console.log digest
	[ ! -s "$d/console-symbols.log" ] || log=$d/console-symbols.log
	digest=$(awk -f "$TOP/scripts/console-digest.awk" "$log" |
		grep -v '^# locks: khungtaskd/' | head -n 12 || true)
	if [ -n "$digest" ]; then
		echo "$digest"
	else
		tr -d '\r' <"$d/console.log" | tail -n 4 | sed 's/^/# console end: /' || true
	fi
}

stage_time() {
	echo "# stage $1: $(( $(date +%s) - $2 )) s" | tee -a "$results"
}

# Boot one kernel and run lists of tests in it.
boot_stage() { # name config append runner-args...
	local name=$1 cfg=$2 append=$3 t0
	shift 3
	t0=$(date +%s)
	local args=(--config "$cfg" --logdir "$res/$name") tmo
	# A hang: no output for longer than the longest test may run.
	tmo=$(awk '!/^#/ && $2 > m { m = $2 } END { print m + 0 }' \
		"${@/#/$TOP/scripts/tests/}")
	args+=(--idle $((tmo + 120)))
	[ -z "$append" ] || args+=(--append "$append")
	# With one TCG thread per vCPU, QEMU's emulation of nested SVM makes
	# guests of the test VM triple-fault, hang at the test VM's own VMRUN
	# return address or lose writes now and then, on unmodified kernels
	# too, and it corrupted the debug kernel itself twice
	# (docs/test-bed.md). One thread leaves the other core to a build or
	# a second stage.
	args+=(--tcg-thread single)
	local run="./run-tests.sh -m \"$modes\""
	[ "$name" != modules ] || run="./kvm-modules.sh load && $run"
	[ -z "$filter" ] || run+=" -f \"$filter\""
	log "stage $name: booting $cfg kernel ${append:+($append) }for $*"
	if "$TOP/scripts/boot.sh" "${args[@]}" -- "$run $*" >"$res/$name.log" 2>&1; then
		record ok "$name: VM exited cleanly, no kernel splat"
	else
		grep -E 'boot.sh:' "$res/$name.log" >&2 || true
		# A failure of the command itself is counted by its own results.
		if grep -q 'command exited' "$res/$name.log" &&
			! grep -qE 'kernel splat|no exit status' "$res/$name.log"; then
			record ok "$name: VM exited cleanly, no kernel splat"
		else
			record fail "$name: VM exited cleanly, no kernel splat"
			boot_failure "$name" >>"$failures"
		fi
	fi
	collect "$res/$name/output.log" "$name: "
	stage_time "$name" "$t0"
}

# Build a kernel of TARGET and, the first time in this run, its selftests
# and initramfs (every config of a target boots the same initramfs: built
# again, it could change under a stage that is booting); a failure is a
# result. STAGES: the stages that boot it, for the result's name.
build_all() { # config stages...
	local cfg=$1 t0 log=$res/build-$TARGET-$1.log what
	shift
	what="build $TARGET $cfg kernel"
	t0=$(date +%s)
	local rest=0
	if [ ! -e "$res/.initramfs-$TARGET" ]; then
		what+=", selftests, initramfs"
		rest=1
	fi
	what+=" (for $*)"
	if "$TOP/scripts/build-kernel.sh" --config "$cfg" >"$log" 2>&1 &&
		{ [ "$rest" = 0 ] || { "$TOP/scripts/build-selftests.sh" &&
			"$TOP/scripts/mkinitramfs.sh"; } >>"$log" 2>&1; }; then
		touch "$res/.initramfs-$TARGET"
		record ok "$what"
		stage_time "build $TARGET $cfg" "$t0"
	else
		tail -n 30 "$log" | sed 's/^/# /'
		record fail "$what"
		return 1
	fi
}

if [ "$(id -u)" = 0 ]; then
	"$TOP/scripts/install-deps.sh"
fi
summary() {
	local pass skip failn retries
	pass=$(grep -E '^ok ' "$results" | grep -vc '# SKIP$' || true)
	skip=$(grep -cE '^ok .*# SKIP$' "$results" || true)
	failn=$(grep -c '^not ok ' "$results" || true)
	[ ! -s "$failures" ] || cat "$failures"
	echo "# results: $results; total time $(( $(date +%s) - start )) s"
	grep -E '^(not ok|# why: )' "$results" || true
	# Every rerun of a test (under TCG only, for a failure proven to be
	# the emulator's: docs/test-bed.md), counted and named.
	retries=$(cat "$res"/*/output.log 2>/dev/null | tr -d '\r' |
		grep -E '^(# )+([^ ].*: )?RETRY: ' | sed -E 's/^(# )+//' || true)
	echo "# retries: $(printf '%s' "$retries" | grep -c . || true)"
	[ -z "$retries" ] || printf '%s\n' "$retries" | sed 's/^/#   /'
	echo "$pass passed, $failn failed, $skip skipped"
	[ "$failn" = 0 ]
}

# Each target the stages need, in the order of TARGETS: its tree holds its
# series. A target that fails leaves its stages out.
declare -A PREPARED=()
for t in $TARGETS; do
	need=0
	for s in "${stages[@]}"; do [ "${S_TARGET[$s]}" != "$t" ] || need=1; done
	[ "$need" = 1 ] || continue
	what="prepare $t: $(target_eval "$t" tree_name) holds patches/$t/series"
	if TARGET=$t "$TOP/scripts/prepare.sh" >"$res/prepare-$t.log" 2>&1; then
		tail -n 1 "$res/prepare-$t.log" | tee -a "$res/source-version"
		record ok "$what"
		PREPARED[$t]=1
	else
		cat "$res/prepare-$t.log" >&2
		record fail "$what"
	fi
done

boot_named() { # stage
	local append=${S_APPEND[$1]} lists build
	# shellcheck disable=SC2016 # expanded by target_eval
	build=$(target_eval "${S_TARGET[$1]}" 'echo "$BUILD"')
	append=${append//@MODULES@/$build/modules/modinst}
	read -r -a lists <<<"${S_LISTS[$1]}"
	TARGET=${S_TARGET[$1]} boot_stage "$1" "${S_CONFIG[$1]}" "$append" "${lists[@]}"
}

# One stage's boot with results of its own (record and collect see these).
boot_into() { # stage
	local results=$res/$1.ktap failures=$res/$1.failures
	: >"$results"
	boot_named "$1"
}

# The build jobs, in order: for each target (the primary first), its series
# check (it builds every patch in the test kernel's build directory, which
# then only needs the last one's changes), then each kernel config that its
# stages boot. "series STAGE" or "build TARGET CONFIG"; BOOTS["TARGET
# CONFIG"]: the stages that boot that kernel.
jobs=()
declare -A BOOTS=()
for t in $TARGETS; do
	[ -n "${PREPARED[$t]:-}" ] || continue
	for s in "${stages[@]}"; do
		if [ "${S_TARGET[$s]}" = "$t" ] && [ "${S_CONFIG[$s]}" = - ]; then
			jobs+=("series $s")
		fi
	done
	for s in "${stages[@]}"; do
		c=${S_CONFIG[$s]}
		{ [ "${S_TARGET[$s]}" = "$t" ] && [ "$c" != - ]; } || continue
		[ -n "${BOOTS[$t $c]:-}" ] || jobs+=("build $t $c")
		BOOTS[$t $c]+="${BOOTS[$t $c]:+ }$s"
	done
done

# Run the jobs in turn, with results of their own; each kernel built makes
# the stages that boot it ready ($res/ready, a stage a line).
builder() {
	local results=$res/builds.ktap failures=$res/builds.failures
	local kind a b t0 for
	: >"$results"
	for j in "${jobs[@]}"; do
		read -r kind a b <<<"$j"
		if [ "$kind" = series ]; then
			t0=$(date +%s)
			TARGET=${S_TARGET[$a]} "$TOP/scripts/check-series.sh" \
				>"$res/$a.log" 2>&1 || true
			grep -E '^(not ok|# .*: built in)' "$res/$a.log" || true
			collect "$res/$a.log" "$a: "
			stage_time "$a" "$t0"
			continue
		fi
		read -r -a for <<<"${BOOTS[$a $b]}"
		TARGET=$a build_all "$b" "${for[@]}" || continue
		printf '%s\n' "${for[@]}" >>"$res/ready"
	done
}

# The builds run in the background, niced, while the stages whose kernel
# is built boot: one at a time while something is still being built (its
# VM takes one core, the build the other and whatever the VM leaves), two
# at a time after (one TCG thread each: the two cores). Ready stages boot in
# stage order. Each stage has results of its own; the builds' come first in
# the run's results, then the stages', in stage order.
: >"$res/ready"
(
	renice -n 10 -p "$BASHPID" >/dev/null 2>&1 || true
	builder
) &
bpid=$!
# Whether a child still runs: not gone, nor a zombie bash has yet to reap.
running_pid() { # pid
	kill -0 "$1" 2>/dev/null && ! grep -qs '^State:.*zombie' "/proc/$1/status"
}
declare -A stage_pid=() begun=()
running=0
while :; do
	building=0
	! running_pid "$bpid" || building=1
	for s in "${!stage_pid[@]}"; do
		pid=${stage_pid[$s]}
		! running_pid "$pid" || continue
		rc=0
		wait "$pid" || rc=$?
		echo "$rc" >"$res/$s.rc"
		unset "stage_pid[$s]"
		running=$((running - 1))
	done
	next=""
	for s in "${stages[@]}"; do
		if [ -z "${begun[$s]:-}" ] && grep -qx -- "$s" "$res/ready"; then
			next=$s
			break
		fi
	done
	if [ -n "$next" ] && [ "$running" -lt $((2 - building)) ]; then
		begun[$next]=1
		state="builds going on"
		[ "$building" = 1 ] || state="builds done"
		log "stage $next: boots ($((running + 1)) VM(s) now, $state)"
		boot_into "$next" &
		stage_pid[$next]=$!
		running=$((running + 1))
		continue
	fi
	[ "$building" = 1 ] || [ "$running" -gt 0 ] || [ -n "$next" ] || break
	sleep 2
done
wait "$bpid" || record fail "builds: ended with status $?"
cat "$res/builds.ktap" >>"$results"
[ ! -s "$res/builds.failures" ] || cat "$res/builds.failures" >>"$failures"
for s in "${stages[@]}"; do
	[ -n "${begun[$s]:-}" ] || continue
	cat "$res/$s.ktap" >>"$results"
	[ ! -s "$res/$s.failures" ] || cat "$res/$s.failures" >>"$failures"
	rc=$(cat "$res/$s.rc")
	[ "$rc" = 0 ] || record fail "$s: stage ended with status $rc"
done

summary
