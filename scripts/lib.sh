# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source it
# Common settings for the scripts in this directory; sourced, never run.

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="${OUT:-$TOP/out}"

# The kernels the series is for, the primary target first: mainline (Linux
# 7.3, from Debian's linux-source-7.3) and the 6.12.y LTS backport (Debian
# 12's linux-source-6.12). TARGET picks one (default: the primary); LINUX,
# BUILD and SRC_TARBALL, when set, override that target's.
TARGETS="7.3 6.12"
# Which of those the environment set (the check below needs to know).
ENV_OVERRIDES=""
for v in LINUX BUILD SRC_TARBALL; do
	[ -z "${!v:-}" ] || ENV_OVERRIDES+="${ENV_OVERRIDES:+ }$v"
done
PRIMARY=7.3
TARGET="${TARGET:-$PRIMARY}"
case "$TARGET" in
7.3)
	LINUX="${LINUX:-$TOP/linux}"
	# Debian 13's backports suite, read by scripts/get-source.sh into
	# build/src/ without installing anything (Architecture: all).
	SRC_SUITE=trixie-backports
	SRC_TARBALL="${SRC_TARBALL:-$TOP/build/src/usr/src/linux-source-7.3.tar.xz}"
	SUBJECT_PREFIX="RFC PATCH"
	# Its selftest guests use 5-level paging when the CPU offers it, and
	# under QEMU 7.2's emulated SVM such guests triple-fault at once.
	BOOT_APPEND=no5lvl
	;;
6.12)
	LINUX="${LINUX:-$TOP/linux-6.12}"
	SRC_SUITE=""
	SRC_TARBALL="${SRC_TARBALL:-/usr/src/linux-source-6.12.tar.xz}"
	SUBJECT_PREFIX="PATCH"
	BOOT_APPEND=""
	;;
*)
	echo "${0##*/}: TARGET=$TARGET: no such target (targets: $TARGETS)" >&2
	exit 2
	;;
esac
export TARGET
SRC_PKG=linux-source-$TARGET
BUILD="${BUILD:-$TOP/build/$TARGET}"
PATCHES="$TOP/patches/$TARGET"
JOBS="${JOBS:-$(nproc)}"
# A one-shot run on a fresh machine (CI) cannot hit in an empty ccache and
# pays for every miss: ccache runs the preprocessor as well as the compiler,
# 17-30% more per kernel file measured here. It stays on everywhere else,
# and in CI too once its cache holds something (CCACHE_DISABLE keeps the
# command lines, so switching never forces a rebuild).
if [ "${CI:-}" = true ] && command -v ccache >/dev/null &&
	[ -z "$(find "$(ccache --get-config cache_dir 2>/dev/null || echo /nonexistent)" \
		-name '*.conf' -prune -o -type f -print -quit 2>/dev/null)" ]; then
	export CCACHE_DISABLE=1
fi
# Tag of the pristine base commit in linux/.
export BASE_TAG=base

die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

log() {
	echo "==> $*" >&2
}

# Version of the Debian source package the tree was made from.
source_version() {
	if [ -n "$SRC_SUITE" ]; then
		cat "$TOP/build/src/$SRC_PKG.version" 2>/dev/null || echo unknown
	else
		dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || echo unknown
	fi
}

# Run a line of shell with target $1's settings (its LINUX, BUILD, ...)
# and lib.sh's functions: target_eval 6.12 'echo "$BUILD"'.
# shellcheck disable=SC2016 # expanded by that bash
target_eval() { # target line
	TARGET=$1 bash -c '. "$0/scripts/lib.sh"; eval "$1"' "$TOP" "$2"
}

# A script that works on more than one target uses each one's own tree and
# build directory: refuse LINUX, BUILD or SRC_TARBALL from the environment.
each_target_its_own() {
	[ -z "$ENV_OVERRIDES" ] ||
		die "$ENV_OVERRIDES set: with more than one target, each uses its own; unset it"
}

# "linux/" or "linux-6.12/", for messages.
tree_name() {
	case "$LINUX" in "$TOP"/*) echo "${LINUX#"$TOP"/}/" ;; *) echo "$LINUX" ;; esac
}

# The unmodified kernel: the base commit of linux/, checked out beside it
# in build/upstream/src and built with the test config into
# build/upstream/test. Prints the bzImage path.
build_upstream() {
	local src="$BUILD/upstream/src" base
	base=$(git -C "$LINUX" rev-parse "$BASE_TAG^{commit}")
	if [ "$(git -C "$src" rev-parse HEAD 2>/dev/null)" != "$base" ]; then
		rm -rf "$src"
		git -C "$LINUX" worktree prune
		git -C "$LINUX" worktree add -q --detach "$src" "$base"
	fi
	LINUX="$src" BUILD="$BUILD/upstream" \
		"$TOP/scripts/build-kernel.sh" --config test
}

# The series with zapping instead of recovery in place: HEAD of linux/ with
# the two commits named below reverted (the huge page collapse as it was
# before them), checked out in build/zap/src and built with the test config
# into build/zap/test. Prints the bzImage path.
ZAP_REVERTS=(
	"KVM: x86/mmu: Recover TDP MMU huge page mappings in place"
	"KVM: x86/mmu: Batch TLB flushes when zapping collapsible SPTEs"
)
build_zap() {
	local src="$BUILD/zap/src" head subject c
	head=$(git -C "$LINUX" rev-parse HEAD)
	if [ "$(cat "$BUILD/zap/head" 2>/dev/null)" != "$head" ]; then
		rm -rf "$src" "$BUILD/zap/head"
		git -C "$LINUX" worktree prune
		git -C "$LINUX" worktree add -q --detach "$src" "$head"
		for subject in "${ZAP_REVERTS[@]}"; do
			c=$(git -C "$LINUX" log --format=%H -F --grep="$subject" \
				"$BASE_TAG..$head" | head -n 1)
			[ -n "$c" ] || die "build_zap: no commit '$subject' in linux/"
			git -C "$src" -c user.name=bench -c user.email=bench@localhost \
				revert --no-edit "$c" >/dev/null
		done
		echo "$head" >"$BUILD/zap/head"
	fi
	LINUX="$src" BUILD="$BUILD/zap" \
		"$TOP/scripts/build-kernel.sh" --config test
}
