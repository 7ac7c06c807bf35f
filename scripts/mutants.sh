#!/usr/bin/env bash
# Show that our tests catch the bugs they are there for: run them on
# kernels with one deliberate bug each, and on the unmodified kernel.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FILE=arch/x86/kvm/mmu/collapse.c
# name: the modes to run in, then the sed script applied to $FILE; each
# must change exactly one line.
declare -A MODES=(
	[lazy-is-sync]="deferred ondemand"
	[no-cancel]="deferred ondemand"
	[no-queue]="deferred"
)
declare -A SED=(
	# The lazy modes collapse inside the ioctl, as sync does.
	[lazy-is-sync]='s/^\tif (mode != KVM_COLLAPSE_SYNC \&\& /\tif (0 \&\& mode != KVM_COLLAPSE_SYNC \&\& /'
	# Memslot updates (delete, move, logging on again) never drop a
	# pending slot: the worker's safety net must WARN.
	[no-cancel]='/^void kvm_mmu_collapse_cancel/,/^}/s/^\tif (!xa_erase(&c->pending, index))$/\tif (1)/'
	# Deferred mode never queues the worker: nothing comes back.
	[no-queue]='s/^\t\t\t\tkvm_mmu_collapse_queue(kvm, READ_ONCE(c->delay_ms));$/\t\t\t\tif (0) kvm_mmu_collapse_queue(kvm, 0);/'
)
ALL="unpatched lazy-is-sync no-cancel no-queue"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--filter REGEX] [NAME...] [--help]

Boots the test kernel with one deliberate bug in KVM's
$FILE (edited in linux/, rebuilt, restored and rebuilt
at the end; linux/ must be clean) and runs tests/lazy_collapse.list in
the modes the bug is about; "unpatched" boots the unmodified kernel
(built as scripts/bench.sh does) and runs the list once. Prints, per
kernel, which of our tests failed and the first reason each gave, and the
first kernel splat in its console (boot.sh --check-log, which fails the
test command as well); a kernel with neither is reported as not caught,
and the exit status is then 1. Logs: out/mutants-<time>/NAME/.
Kernels (default: all):
  unpatched     the base commit: every lazy_collapse_test must fail (no
                kvm.collapse_mode); lazy_collapse_perf_smoke is the
                benchmark's smoke run, which measures unpatched kernels too
  lazy-is-sync  ${MODES[lazy-is-sync]}: collapse inside the ioctl
  no-cancel     ${MODES[no-cancel]}: memslot updates keep a slot pending
  no-queue      ${MODES[no-queue]}: the worker is never queued (its
                tests wait out their timeouts: about 20 minutes)
  --filter  only the tests whose name matches this grep -E regex
USAGE
}

names=() filter=""
while [ $# -gt 0 ]; do
	case "$1" in
	--filter) filter=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	unpatched | lazy-is-sync | no-cancel | no-queue) names+=("$1") ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
[ "${#names[@]}" -gt 0 ] || read -r -a names <<<"$ALL"

[ "$(id -u)" != 0 ] || "$TOP/scripts/install-deps.sh"
"$TOP/scripts/prepare.sh" >/dev/null
git -C "$LINUX" diff --quiet HEAD || die "linux/ has uncommitted changes"
res="$OUT/mutants-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$res"
"$TOP/scripts/build-kernel.sh" >/dev/null
"$TOP/scripts/build-selftests.sh" >/dev/null
"$TOP/scripts/mkinitramfs.sh" >/dev/null

restore() {
	git -C "$LINUX" checkout -q -- "$FILE"
}
trap 'restore; log "linux/$FILE restored: rebuild with scripts/build-kernel.sh"' EXIT

run() { # name modes boot-args...
	local name=$1 modes=$2 run
	shift 2
	run="./run-tests.sh -m \"$modes\""
	[ -z "$filter" ] || run+=" -f \"$filter\""
	log "$name: running lazy_collapse.list ($modes)"
	"$TOP/scripts/boot.sh" --append "hugepagesz=1G hugepages=2" \
		--logdir "$res/$name" "$@" -- "$run lazy_collapse.list" \
		>"$res/$name.log" 2>&1 || true
}

uncaught=0
for name in "${names[@]}"; do
	if [ "$name" = unpatched ]; then
		kernel=$(build_upstream | tail -n 1)
		run unpatched - --kernel "$kernel"
	else
		sed -i "${SED[$name]}" "$LINUX/$FILE"
		[ "$(git -C "$LINUX" diff --numstat -- "$FILE" | cut -f1,2)" = "1	1" ] ||
			die "$name: the edit did not change exactly one line of $FILE"
		git -C "$LINUX" diff -U0 -- "$FILE" | grep '^[-+]	' | sed "s/^/# $name: /"
		"$TOP/scripts/build-kernel.sh" >"$res/$name-build.log" 2>&1 ||
			die "$name: build failed, see $res/$name-build.log"
		run "$name" "${MODES[$name]}"
		restore
	fi
	out=$res/$name/output.log
	failed=$(grep -c '^not ok ' "$out" || true)
	echo "# $name: $failed of $(grep -cE '^(not )?ok ' "$out" || true) tests failed"
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
	# boot.sh's own splat check, which fails the test command too.
	splat=0
	if ! lines=$("$TOP/scripts/boot.sh" --check-log "$res/$name/console.log" 2>&1); then
		splat=1
		echo "#   console: $(head -n 1 <<<"$lines" | cut -d: -f2-)"
	fi
	[ "$failed" -gt 0 ] || [ "$splat" = 1 ] || { echo "# $name: NOT CAUGHT"; uncaught=1; }
done
trap - EXIT
restore
"$TOP/scripts/build-kernel.sh" >/dev/null
log "linux/$FILE restored and the test kernel rebuilt; logs in $res"
exit "$uncaught"
