#!/usr/bin/env bash
# Make the kernel tree of a target from its pinned source and apply its series.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: [TARGET=T] ${0##*/} [--force] [--help]

For target T ($TARGETS; default $PRIMARY, mainline; 6.12 is the 6.12.y
backport): unpack Debian's $SRC_PKG (scripts/get-source.sh fetches it)
into $(tree_name), make it a git repository whose first commit is the
pristine source (tag '$BASE_TAG' and 'v<kernelversion>-debian-<pkgversion>'),
apply ${PATCHES#"$TOP"/}/series with 'git am', then check that the
selftests of this repository agree with it (scripts/sync-selftests.sh).

If $(tree_name) already exists it is left alone when it holds the series
already (its commits match ${PATCHES#"$TOP"/}), and refused otherwise.
  --force   throw $(tree_name) away and make it again (refused if it has
            uncommitted changes; commit or stash them first).
USAGE
}

force=0
while [ $# -gt 0 ]; do
	case "$1" in
	--force) force=1 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

"$TOP/scripts/get-source.sh" >/dev/null

# The selftests here and in linux/ must agree; making them agree rewrites
# linux/'s history, which only ./run sync does, when asked.
selftests_agree() {
	"$TOP/scripts/sync-selftests.sh" --check >/dev/null 2>&1 ||
		die "tools/testing/selftests/kvm/ differs from $(tree_name)'s: TARGET=$TARGET ./run sync (amends the selftest patch), then TARGET=$TARGET ./run export"
}

if [ -d "$LINUX/.git" ]; then
	if [ -n "$(git -C "$LINUX" status --porcelain --untracked-files=no)" ]; then
		die "$(tree_name) has uncommitted changes; commit them (then scripts/export.sh) first"
	fi
	if [ "$force" = 0 ]; then
		if "$TOP/scripts/export.sh" --check >/dev/null 2>&1; then
			log "$(tree_name) already holds ${PATCHES#"$TOP"/}/series; nothing to do"
			selftests_agree
			git -C "$LINUX" log -1 --format=%s "$BASE_TAG"
			exit 0
		fi
		die "$(tree_name) exists and differs from ${PATCHES#"$TOP"/}/; export it (TARGET=$TARGET scripts/export.sh) or use --force"
	fi
	log "removing $(tree_name) (--force)"
	rm -rf "$LINUX"
fi

log "unpacking $SRC_TARBALL"
tmp=$(mktemp -d "$TOP/.prepare.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -C "$tmp" -xf "$SRC_TARBALL"
mv "$tmp/$SRC_PKG" "$LINUX"

kver=$(make -s -C "$LINUX" kernelversion)
pkgver=$(source_version)
cd "$LINUX"
git init -q -b lazy-collapse
# Debian's top-level .gitignore ignores everything ("/*"): add by force.
git add -A -f
# Fixed identity and dates: the base commit's id is then the same on every
# machine for the same source package, and is what base-commit: names.
GIT_AUTHOR_NAME=linux-source GIT_AUTHOR_EMAIL=linux-source@localhost \
	GIT_COMMITTER_NAME=linux-source GIT_COMMITTER_EMAIL=linux-source@localhost \
	GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
	git commit -q -m "Linux $kver (Debian $SRC_PKG $pkgver)"
git tag "$BASE_TAG"
git tag -f "v$kver-debian-$(echo "$pkgver" | tr "~:" "_.")" >/dev/null
log "base: Linux $kver from Debian $SRC_PKG $pkgver"

if [ -s "$PATCHES/series" ]; then
	while read -r p; do
		case "$p" in '' | '#'*) continue ;; esac
		git am -q --keep-cr "$PATCHES/$p" || {
			git am --abort || true
			die "patch $p does not apply"
		}
	done <"$PATCHES/series"
fi
log "applied $(git rev-list --count "$BASE_TAG"..HEAD) patches"
selftests_agree
echo "Linux $kver (Debian $SRC_PKG $pkgver)"
