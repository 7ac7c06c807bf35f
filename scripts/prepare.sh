#!/usr/bin/env bash
# Make linux/ from the pinned 6.12.y source and apply patches/series.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--force] [--help]

Unpack $SRC_TARBALL into linux/, make it a git repository whose first
commit is the pristine source (tag '$BASE_TAG' and 'v<kernelversion>-debian<pkgversion>'),
apply patches/series with 'git am', then sync the selftests of this repository
into it (scripts/sync-selftests.sh).

If linux/ already exists it is left alone when it holds the series already
(its commits match patches/), and refused otherwise.
  --force   throw linux/ away and make it again (refused if linux/ has
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

[ -r "$SRC_TARBALL" ] || die "$SRC_TARBALL missing: run scripts/install-deps.sh"

# The selftests here and in linux/ must agree; making them agree rewrites
# linux/'s history, which only ./run sync does, when asked.
selftests_agree() {
	"$TOP/scripts/sync-selftests.sh" --check >/dev/null 2>&1 ||
		die "tools/testing/selftests/kvm/ differs from linux/'s: ./run sync (amends the selftest patch), then ./run export"
}

if [ -d "$LINUX/.git" ]; then
	if [ -n "$(git -C "$LINUX" status --porcelain --untracked-files=no)" ]; then
		die "linux/ has uncommitted changes; commit them (then scripts/export.sh) first"
	fi
	if [ "$force" = 0 ]; then
		if "$TOP/scripts/export.sh" --check >/dev/null 2>&1; then
			log "linux/ already holds patches/series; nothing to do"
			selftests_agree
			exit 0
		fi
		die "linux/ exists and differs from patches/; export it (scripts/export.sh) or use --force"
	fi
	log "removing linux/ (--force)"
	rm -rf "$LINUX"
fi

log "unpacking $SRC_TARBALL"
tmp=$(mktemp -d "$TOP/.prepare.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -C "$tmp" -xf "$SRC_TARBALL"
mv "$tmp"/linux-source-6.12 "$LINUX"

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
	git commit -q -m "Linux $kver (Debian linux-source-6.12 $pkgver)"
git tag "$BASE_TAG"
git tag -f "v$kver-debian-$(echo "$pkgver" | tr "~:" "_.")" >/dev/null
log "base: Linux $kver from Debian linux-source-6.12 $pkgver"

if [ -s "$TOP/patches/series" ]; then
	while read -r p; do
		case "$p" in '' | '#'*) continue ;; esac
		git am -q --keep-cr "$TOP/patches/$p" || {
			git am --abort || true
			die "patch $p does not apply"
		}
	done <"$TOP/patches/series"
fi
log "applied $(git rev-list --count "$BASE_TAG"..HEAD) patches"
selftests_agree
echo "Linux $kver (Debian linux-source-6.12 $pkgver)"
