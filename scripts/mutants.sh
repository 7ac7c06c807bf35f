#!/usr/bin/env bash
# Show that our tests catch the bugs they are there for: run them on
# kernels with one deliberate bug each, and on the unmodified kernel.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The mutants: the file under arch/x86/kvm/ and the sed script that changes
# one line of it; the modes and list to run, extra boot arguments, and the
# tests (a grep -E on their names) that must catch the bug: a mutant none of
# them fails is NOT CAUGHT (a kernel splat alone is not enough).
declare -A FILE MODES LIST APPEND TESTS SED
mutant() { # name file modes list append tests sed
	FILE[$1]=$2 MODES[$1]=$3 LIST[$1]=$4 APPEND[$1]=$5 TESTS[$1]=$6 SED[$1]=$7
	ALL+=" $1"
}
ALL=""
# The lazy modes collapse inside the ioctl, as sync does.
mutant lazy-is-sync mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_(restore_thp|stoptime_thp|abi)' \
	's/^\tif (c->mode == KVM_COLLAPSE_SYNC) {$/\tif (1) {/'
# Memslot updates (delete, move, logging again) keep a slot pending.
mutant no-cancel mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_(races|smm)' \
	'/^void kvm_mmu_collapse_cancel/,/^}/s/^\tif (!s)$/\tif (1)/'
# A memslot update cancels every pending collapse of the VM, not its own.
mutant cancel-all mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_(races|smm)' \
	'/^void kvm_mmu_collapse_cancel/,/^}/s/^\tkvm_collapse_remove(kvm, index, s, true);$/\txa_for_each(\&kvm->arch.collapse.pending, index, s) kvm_collapse_remove(kvm, index, s, true);/'
# Deferred mode never queues the worker: nothing comes back.
mutant no-queue mmu/collapse.c 'deferred' lazy_collapse.list '' \
	'lazy_collapse_(restore_thp|starve)' \
	'/^void kvm_mmu_collapse_slot/,/^}/s/^\t\ts->queued = true;$/\t\ts->queued = false;/'
# Deferred mode ignores collapse_delay_ms.
mutant no-delay mmu/collapse.c 'deferred' lazy_collapse.list '' \
	'lazy_collapse_(restore_thp|starve)' \
	's/^\t\ts->due = s->stopped + msecs_to_jiffies(c->delay_ms);$/\t\ts->due = s->stopped;/'
# The worker ignores collapse_batch: a memslot in one hold.
mutant no-batch mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_restore_thp' \
	'/^static bool kvm_collapse_batch/,/^}/s/^\tif (batch)$/\tif (0)/'
# One due time for the VM, the last stop's: a stop postpones every slot.
mutant vm-due mmu/collapse.c 'deferred' lazy_collapse.list '' \
	'lazy_collapse_starve' \
	's/^\t\ts->due = s->stopped + msecs_to_jiffies(c->delay_ms);$/\t\ts->due = s->stopped + msecs_to_jiffies(c->delay_ms); { struct kvm_collapse_slot *o; unsigned long i; xa_for_each(\&c->pending, i, o) o->due = s->due; }/'
# An interrupted collapse starts over from the memslot's first gfn.
mutant restart mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_resume' \
	's/^\tmax_seq = c->seq;$/\tmax_seq = c->seq; xa_for_each(\&c->pending, index, s) if (s->started) { s->started = false; s->run.next = id_to_memslot(__kvm_memslots(kvm, kvm_collapse_as_id(index)), kvm_collapse_id(index))->base_gfn; }/'
# The pending index drops the address space: SMM slots collide.
mutant no-as-id mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_(smm|races)' \
	's/^\treturn ((unsigned long)as_id << 16) | (u16)id;$/\treturn (u16)id;/'
# The memslot ioctl that stops logging creates the worker.
mutant memslot-thread mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_worker' \
	's/^\tif (!READ_ONCE(c->task)) {$/\tif (!READ_ONCE(c->task) \&\& call_once(\&c->once, kvm_collapse_start_worker)) {/'
# VM destruction never stops the worker.
mutant no-stop mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_(worker|teardown)' \
	's/^\t\tvhost_task_stop(kvm->arch.collapse.task);$/\t\tvhost_task_wake(kvm->arch.collapse.task);/'
# kvm.collapse_mode defaults to deferred.
mutant default-deferred mmu/collapse.c 'sync' lazy_collapse.list '' \
	'lazy_collapse_defaults' \
	's/^static int __read_mostly collapse_mode = KVM_COLLAPSE_SYNC;$/static int __read_mostly collapse_mode = KVM_COLLAPSE_DEFERRED;/'
# KVM_ENABLE_CAP takes unknown flags.
mutant cap-flags mmu/collapse.c 'sync' lazy_collapse.list '' \
	'lazy_collapse_abi' \
	's/^\tif (!flags || (flags \& ~KVM_X86_COLLAPSE_VALID_FLAGS))$/\tif (!flags)/'
# KVM_X86_COLLAPSE_HUGE_PAGES takes any argument.
mutant ioctl-arg x86.c 'ondemand' lazy_collapse.list '' \
	'lazy_collapse_abi' \
	'/^\tcase KVM_X86_COLLAPSE_HUGE_PAGES:$/,/break;/s/^\t\tif (arg)$/\t\tif (0)/'
# The shadow MMU counts zapped SPTEs, not huge page regions.
mutant rmap-sptes mmu/mmu.c 'deferred' lazy_collapse_shadow.list 'kvm.tdp_mmu=N' \
	'lazy_collapse_(restore_thp|resume)' \
	'/^static bool kvm_mmu_zap_collapsible_spte/,/^}/s/^\t\tif (region != \*last_region) {$/\t\tif (1) {/'
# The TDP MMU zaps instead of recovering huge pages in place (6.12's
# line, then 7.3's: one of them is there).
mutant zap mmu/tdp_mmu.c 'sync deferred' lazy_collapse.list '' \
	'lazy_collapse_inplace_(thp|hugetlb_1g)' \
	's/^\t\tnew_spte = r ? SHADOW_NONPRESENT_VALUE : huge_spte;$/\t\tnew_spte = SHADOW_NONPRESENT_VALUE;/; s/^\t\tif (tdp_mmu_set_spte_atomic(kvm, \&iter, huge_spte))$/\t\tif (tdp_mmu_set_spte_atomic(kvm, \&iter, SHADOW_NONPRESENT_VALUE))/'
# One remote TLB flush per region recovered, not one per walk.
mutant flush-each mmu/tdp_mmu.c 'sync deferred' lazy_collapse.list '' \
	'lazy_collapse_inplace_thp' \
	's/^\t\tregions++;$/\t\tregions++; kvm_flush_remote_tlbs_gfn(kvm, iter.gfn, iter.level);/'
# A huge page recovered in place is executable with NX huge pages on.
mutant exec-huge mmu/spte.c 'sync' lazy_collapse.list '' \
	'lazy_collapse_inplace_nx' \
	's/^\tif (is_nx_huge_page_enabled(kvm))$/\tif (0)/'
# The worker does not pause after a batch (collapse_pause_pct ignored).
mutant no-pause mmu/collapse.c 'deferred ondemand' lazy_collapse.list '' \
	'lazy_collapse_pace' \
	's/^\tif (s \&\& pause_pct) {$/\tif (0) {/'

usage() {
	cat <<USAGE
Usage: [TARGET=T] ${0##*/} [NAME...] [--help]

Boots the test kernel of target T (7.3, the default, tree linux/; 6.12,
linux-6.12/) with one deliberate bug (an edit of exactly one line under
arch/x86/kvm/ of the tree, rebuilt, restored and rebuilt at the end; the
tree must be clean) and runs, in the modes the bug is about, the tests of our
lists that must catch it; "unpatched" boots the unmodified kernel (built as
scripts/bench.sh does), on which each of our tests must skip or fail.
Prints, per kernel, which tests failed and the first reason each gave, and
the first kernel splat in its console (boot.sh --check-log, which fails the
test command as well). A kernel on which none of its named tests fails is
reported as NOT CAUGHT, and the exit status is then 1. Logs:
out/mutants-<time>/NAME/.
Kernels (default: all), with the tests that must catch each:
$(for n in $ALL; do printf '  %-17s %s (%s)\n' "$n" "${TESTS[$n]}" "${MODES[$n]}"; done)
  unpatched         every lazy_collapse test skips: no KVM_CAP_X86_HUGE_PAGE_COLLAPSE
USAGE
}

sel=()
while [ $# -gt 0 ]; do
	case "$1" in
	-h | --help) usage; exit 0 ;;
	unpatched) sel+=("$1") ;;
	*)
		[ -n "${FILE[$1]:-}" ] || { usage >&2; exit 2; }
		sel+=("$1") ;;
	esac
	shift
done
[ "${#sel[@]}" -gt 0 ] || read -r -a sel <<<"$ALL unpatched"

[ "$(id -u)" != 0 ] || "$TOP/scripts/install-deps.sh"
"$TOP/scripts/prepare.sh" >/dev/null
git -C "$LINUX" diff --quiet HEAD || die "$(tree_name) has uncommitted changes"
res="$OUT/mutants-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$res"
"$TOP/scripts/build-kernel.sh" >/dev/null
"$TOP/scripts/build-selftests.sh" >/dev/null
"$TOP/scripts/mkinitramfs.sh" >/dev/null

restore() {
	git -C "$LINUX" checkout -q -- arch/x86/kvm
}
trap 'restore; log "linux/arch/x86/kvm restored: rebuild with scripts/build-kernel.sh"' EXIT

run() { # name modes list filter boot-args...
	local name=$1 modes=$2 list=$3 filter=$4 run
	shift 4
	run="./run-tests.sh -m \"$modes\" -f \"$filter\" $list"
	log "$name: $list, $filter ($modes)"
	"$TOP/scripts/boot.sh" --append "hugepagesz=1G hugepages=2 ${append:-}" \
		--logdir "$res/$name" "$@" -- "$run" >"$res/$name.log" 2>&1 || true
}

uncaught=0
for name in "${sel[@]}"; do
	append=""
	if [ "$name" = unpatched ]; then
		kernel=$(build_upstream | tail -n 1)
		run unpatched - lazy_collapse.list 'lazy_collapse_.*' --kernel "$kernel"
		out=$res/$name/output.log
		n=$(grep -cE '^ok [0-9]+ lazy_collapse' "$out" || true)
		ran=$(grep -E '^ok [0-9]+ lazy_collapse' "$out" | grep -vc '# SKIP' || true)
		echo "# unpatched: $n of our tests, $ran of them passed (not skipped)"
		# The benchmark's smoke run measures unmodified kernels too.
		grep -E '^ok [0-9]+ lazy_collapse' "$out" | grep -v '# SKIP' |
			grep -v perf_smoke | sed 's/^/#   passed: /' || true
		[ "$(grep -E '^ok [0-9]+ lazy_collapse' "$out" | grep -v '# SKIP' |
			grep -vc perf_smoke || true)" = 0 ] || { echo "# unpatched: NOT CAUGHT"; uncaught=1; }
		continue
	fi
	file=arch/x86/kvm/${FILE[$name]}
	sed -i "${SED[$name]}" "$LINUX/$file"
	[ "$(git -C "$LINUX" diff --numstat -- "$file" | cut -f1,2)" = "1	1" ] ||
		die "$name: the edit did not change exactly one line of $file"
	git -C "$LINUX" diff -U0 -- "$file" | grep -E '^[-+]([^-+]|$)' | sed "s/^/# $name: /" || true
	"$TOP/scripts/build-kernel.sh" >"$res/$name-build.log" 2>&1 ||
		die "$name: build failed, see $res/$name-build.log"
	append=${APPEND[$name]}
	run "$name" "${MODES[$name]}" "${LIST[$name]}" "${TESTS[$name]}"
	restore
	out=$res/$name/output.log
	failed=$(grep -cE '^not ok ' "$out" || true)
	echo "# $name: $failed of $(grep -cE '^(not )?ok [0-9]+ ' "$out" || true) tests failed"
	# Each failed test and the first reason its output gave.
	awk '/^(not )?ok [0-9]+ / {
		if ($1 == "not") {
			n = $0; sub(/^not ok [0-9]+ /, "", n)
			print "#   " n ": " (why != "" ? why : "(no reason printed)")
		}
		why = ""; next
	}
	why == "" && /\.c:[0-9]+: |FAIL|timed out/ { why = $0; sub(/^[# ]*/, "", why) }' \
		"$out" | head -n 40
	if ! lines=$("$TOP/scripts/boot.sh" --check-log "$res/$name/console.log" 2>&1); then
		echo "#   console: $(head -n 1 <<<"$lines" | cut -d: -f2-)"
	fi
	[ "$failed" -gt 0 ] || { echo "# $name: NOT CAUGHT"; uncaught=1; }
done
trap - EXIT
restore
"$TOP/scripts/build-kernel.sh" >/dev/null
log "linux/arch/x86/kvm restored and the test kernel rebuilt; logs in $res"
exit "$uncaught"
