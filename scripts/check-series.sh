#!/usr/bin/env bash
# Check the series: checkpatch, patches/ in sync with linux/, bisectability.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: [TARGET=T] ${0##*/} [--no-build] [--config NAME] [--help]

Print KTAP results for:
  - scripts/checkpatch.pl --strict on every patch of patches/T/series
    (0 errors, 0 warnings, 0 checks; FILE_PATH_CHANGES is ignored: it only
    asks whether MAINTAINERS needs updating for a new file, and
    arch/x86/kvm/ and tools/testing/selftests/kvm/ are covered there);
  - scripts/export.sh --check (patches/T/ is what the tree exports);
  - unless --no-build, a build (to vmlinux) of every commit of the series
    in turn (config NAME, default test, KVM_WERROR=y), ending at HEAD; a
    commit that only changes Documentation/ or tools/testing/selftests/
    passes with its parent's build.
Exit status 0 only if all passed.
USAGE
}

build=1 cfg="test"
while [ $# -gt 0 ]; do
	case "$1" in
	--no-build) build=0 ;;
	--config) cfg=${2:?}; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done
[ -d "$LINUX/.git" ] || die "no $(tree_name): run TARGET=$TARGET scripts/prepare.sh"

mapfile -t patches < <(grep -v -e '^#' -e '^$' "$PATCHES/series")
mapfile -t commits < <(git -C "$LINUX" rev-list --reverse "$BASE_TAG"..HEAD)
n=$(( ${#patches[@]} + 1 ))
[ "$build" = 0 ] || n=$(( n + ${#commits[@]} ))
echo "KTAP version 1"
echo "1..$n"
i=0 fail=0
result() { # status name
	i=$((i + 1))
	if [ "$1" = 0 ]; then echo "ok $i $2"; else echo "not ok $i $2"; fail=1; fi
}

# spdxcheck.py wants Debian's python3 (python3-ply), not another python3.
for p in "${patches[@]}"; do
	out=$(cd "$LINUX" && PATH=/usr/bin:$PATH ./scripts/checkpatch.pl --strict \
		--ignore FILE_PATH_CHANGES "$PATCHES/$p" 2>&1) && rc=0 || rc=1
	if ! grep -q '^total: 0 errors, 0 warnings, 0 checks' <<<"$out"; then
		rc=1
	fi
	[ "$rc" = 0 ] || printf '%s\n' "$out" | sed 's/^/# /'
	result "$rc" "checkpatch $p"
done

if out=$("$TOP/scripts/export.sh" --check 2>&1); then rc=0; else rc=1; fi
printf '%s\n' "$out" | sed 's/^/# /'
result "$rc" "${PATCHES#"$TOP"/}/ agrees with $(tree_name)"

if [ "$build" = 1 ]; then
	[ -z "$(git -C "$LINUX" status --porcelain --untracked-files=no)" ] ||
		die "linux/ has uncommitted changes"
	mkdir -p "$BUILD"
	branch=$(git -C "$LINUX" branch --show-current)
	trap 'git -C "$LINUX" checkout -q "$branch"' EXIT
	for c in "${commits[@]}"; do
		subj=$(git -C "$LINUX" log -1 --format=%s "$c")
		# A patch to documentation or selftests only leaves the kernel
		# its parent built.
		if git -C "$LINUX" diff --quiet "$c^" "$c" -- . \
			':!Documentation' ':!tools/testing/selftests'; then
			echo "# $subj: no kernel source change, same build as its parent"
			result 0 "builds: $subj"
			continue
		fi
		git -C "$LINUX" checkout -q "$c"
		t0=$(date +%s)
		if "$TOP/scripts/build-kernel.sh" --config "$cfg" --vmlinux \
			>"$BUILD/bisect.log" 2>&1; then
			rc=0
		else
			rc=1
			tail -n 30 "$BUILD/bisect.log" | sed 's/^/# /' || true
		fi
		echo "# $subj: built in $(( $(date +%s) - t0 )) s"
		result "$rc" "builds: $subj"
	done
	git -C "$LINUX" checkout -q "$branch"
	trap - EXIT
fi
exit "$fail"
