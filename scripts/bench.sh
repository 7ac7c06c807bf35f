#!/usr/bin/env bash
# Benchmark: stopping dirty logging and getting huge pages back, against
# memory size, per collapse mode, side by side with the unmodified kernel.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [options]

For each target (default: "$TARGETS": mainline 7.3, then the 6.12.y
backport; scripts/lib.sh), build the patched kernel and, unless
--no-upstream, the unmodified one (the '$BASE_TAG' commit of the target's
tree, in build/T/upstream/: for 7.3 that is mainline's eager recovery in
place) and, for 6.12 unless --no-zap, the series that zaps instead of
recovering huge pages in place (linux-6.12/ with its two commits reverted,
in build/6.12/zap/); boot each in QEMU and run
tools/testing/selftests/kvm/x86_64/lazy_collapse_perf_test for every size
and backing: on the patched kernels in sync, deferred and ondemand mode
(the zapping ones as zap-sync, ...), on the unmodified one once
("upstream"); the 6.12 kernels' modes are labelled 6.12-sync, ...,
6.12-zap-sync, 6.12-upstream. Write under DIR:
  results.md        the table, the goals and a 4 TiB extrapolation
  results.txt       the raw "result" lines; curve-*.dat the pages_2m curves
  stoptime-BACKING.png   stop time (all slots) against size, log-log
  pergib-BACKING.png     collapse time, TLB flushes and page faults per GiB
  recovery-BACKING-SIZE.png  pages_2m over time from the stop, per mode
and print results.md.

  --targets "T..."   the kernels (default: "$TARGETS")
  --sizes "S..."     test memory sizes (default: "$SIZES_DEFAULT")
  --backings "B..."  thp and/or hugetlb (2MiB hugetlbfs) (default: "thp hugetlb")
  --vcpus N          vCPUs writing the memory (default: 2)
  --slots N          memslots the memory is split over (default: 1)
  --delay MS         collapse_delay_ms of the deferred runs (default: 1000)
  --mem SIZE         memory of the QEMU VM (default: 8G)
  --no-upstream      skip the unmodified kernel
  --no-zap           skip the zapping series (6.12)
  --qemu             also run the QEMU scenario (scripts/vmm/scenario.py: a
                     live migration of Debian's QEMU that fails, one that
                     is cancelled, one cancelled and retried at once, one
                     that completes before the source is resumed) in each
                     mode: its stop time as QEMU saw it goes into a table
                     of its own
  --out DIR          default: out/bench-<time> (out/bench-latest links to it)
All times are wall-clock inside QEMU (TCG unless /dev/kvm is usable): compare
ratios within one run, not absolute numbers across runs.
USAGE
}

SIZES_DEFAULT="2M 256M 1G 4G"
sizes=$SIZES_DEFAULT backings="thp hugetlb" vcpus=2 slots=1 delay=1000
mem=8G upstream=1 zap=1 dir="" qemu=0 targets=$TARGETS
while [ $# -gt 0 ]; do
	case "$1" in
	--targets) targets=${2:?}; shift ;;
	--sizes) sizes=${2:?}; shift ;;
	--backings) backings=${2:?}; shift ;;
	--vcpus) vcpus=${2:?}; shift ;;
	--slots) slots=${2:?}; shift ;;
	--delay) delay=${2:?}; shift ;;
	--mem) mem=${2:?}; shift ;;
	--no-upstream) upstream=0 ;;
	--no-zap) zap=0 ;;
	--qemu) qemu=1 ;;
	--out) dir=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
for t in $targets; do
	[[ " $TARGETS " == *" $t "* ]] || die "--targets: no target '$t' (targets: $TARGETS)"
done
[ -n "${targets// /}" ] || die "--targets: none given"
[ "$targets" = "$TARGET" ] || each_target_its_own
for b in $backings; do
	case "$b" in thp | hugetlb) ;; *) die "--backings: '$b' is not thp or hugetlb" ;; esac
done
for s in $sizes; do
	[[ $s =~ ^[0-9]+[MG]$ ]] || die "--sizes: '$s' is not like 256M or 4G"
done
[[ $vcpus =~ ^[1-9][0-9]?$ ]] || die "--vcpus: '$vcpus' is not 1-16"
[[ $slots =~ ^[1-9][0-9]?$ ]] || die "--slots: '$slots' is not 1-64"
[[ $delay =~ ^[0-9]+$ ]] || die "--delay: '$delay' is not a number of ms"

[ -n "$dir" ] || dir="$OUT/bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
ln -sfn "$dir" "$OUT/bench-latest"


[ "$(id -u)" != 0 ] || "$TOP/scripts/install-deps.sh"
declare -A KERNEL=()
for t in $targets; do
	TARGET=$t "$TOP/scripts/prepare.sh"
	TARGET=$t "$TOP/scripts/build-kernel.sh" --config test >/dev/null
	TARGET=$t "$TOP/scripts/build-selftests.sh" >/dev/null
	TARGET=$t "$TOP/scripts/mkinitramfs.sh" >/dev/null
	# The unmodified kernel and the zapping series (lib.sh).
	[ "$upstream" = 0 ] || KERNEL[$t-upstream]=$(target_eval "$t" build_upstream | tail -n 1)
	[ "$zap" = 0 ] || [ "$t" != 6.12 ] || KERNEL[$t-zap]=$(target_eval "$t" build_zap | tail -n 1)
done

# The command run in the VM: every backing, size and mode.
vm_cmd() { # modes
	local b s m src pages
	echo "set -e"
	for b in $backings; do
		src=anonymous_thp
		if [ "$b" = hugetlb ]; then
			src=anonymous_hugetlb_2mb
			pages=0
			for s in $sizes; do
				s=$(numfmt --from=iec "$s")
				[ "$((s / 2097152))" -le "$pages" ] || pages=$((s / 2097152))
			done
			echo "echo $((pages + 64)) >/proc/sys/vm/nr_hugepages"
		fi
		for s in $sizes; do
			for m in $1; do
				echo "./x86_64/lazy_collapse_perf_test -b $s -s $src -v $vcpus -x $slots -m $m -d $delay"
			done
		done
	done
	[ "$qemu" = 1 ] || return 0
	# The QEMU runs report in their own lines; under TCG a run can fail
	# for the emulator's sake (scripts/vmm/scenario.py): carry on.
	for m in $1; do
		[ "$m" = upstream ] ||
			echo "echo $m >/sys/module/kvm/parameters/collapse_mode"
		echo "./vmm/run.sh fail cancel retry resume || echo '# QEMU scenario failed ($m)'"
	done
}

run_kernel() { # target name modes [boot.sh options]
	local t=$1 name=$1-$2 modes=$3
	shift 3
	log "benchmark on the $name kernel: $modes; sizes $sizes; $backings"
	TARGET=$t "$TOP/scripts/boot.sh" --mem "$mem" --smp "$((vcpus + 1))" \
		--timeout 5400 --logdir "$dir/$name" "$@" -- "$(vm_cmd "$modes")" \
		>"$dir/$name.log" 2>&1 || {
		tail -n 30 "$dir/$name.log" >&2
		die "the benchmark failed on the $name kernel: $dir/$name/"
	}
}

for t in $targets; do
	run_kernel "$t" patched "sync deferred ondemand"
	[ -z "${KERNEL[$t-zap]:-}" ] ||
		run_kernel "$t" zap "sync deferred ondemand" --kernel "${KERNEL[$t-zap]}"
	[ -z "${KERNEL[$t-upstream]:-}" ] ||
		run_kernel "$t" upstream upstream --kernel "${KERNEL[$t-upstream]}"
done

# The runs are told apart by their mode: the zapping series' zap-sync,
# ..., and the backport's 6.12-sync, ..., 6.12-zap-sync, 6.12-upstream.
for t in $targets; do
	for k in patched zap upstream; do
		[ -f "$dir/$t-$k/output.log" ] || continue
		p=""
		[ "$t" = "$PRIMARY" ] || p="$t-"
		[ "$k" != zap ] || p="${p}zap-"
		sed -E "s/^((qemu-)?result|curve) mode=/\\1 mode=$p/" "$dir/$t-$k/output.log"
	done
done >"$dir/all-output.log"
grep -hE '^(qemu-)?result ' "$dir/all-output.log" >"$dir/results.txt" || true
grep -h '^curve ' "$dir/all-output.log" >"$dir/curves.txt" || true
# What was measured, on what: for results.md's header.
{
	c=$(git -C "$TOP" rev-parse --short HEAD)
	git -C "$TOP" diff --quiet HEAD -- patches tools scripts || c+=" with uncommitted changes"
	echo "- commit: $c"
	for t in $targets; do
		# shellcheck disable=SC2016 # expanded by that bash
		target_eval "$t" 'echo "- $TARGET: $(tree_name) at $(git -C "$LINUX" log -1 --format="%h (%s)"), Debian $SRC_PKG $(source_version)"'
	done
	echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -g | awk '/^Mem:/ { print $2 }') GiB"
	echo "- test VM: $(grep -m1 -ho -- '-accel [^)]*' "$dir"/*-patched.log || echo unknown), $((vcpus + 1)) vCPUs, $mem"
	echo "- date: $(date -u +%Y-%m-%d)"
} >"$dir/meta.txt"
python3 "$TOP/scripts/bench-report.py" "$dir" "$delay"
cat "$dir/results.md"
