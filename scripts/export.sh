#!/usr/bin/env bash
# Regenerate patches/ from linux/.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--check] [--help]

Write the commits $BASE_TAG..HEAD of linux/ to patches/ as git format-patch
files, with a plain 'series' file and a cover letter (0000-cover-letter.patch)
whose text comes from patches/cover-letter.txt (first paragraph: subject)
and which names the base (base-commit:, and the Debian source version).
  --check   write nothing; exit 1 if patches/ would change.
USAGE
}

check=0
case "${1:-}" in
--check) check=1 ;;
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

[ -d "$LINUX/.git" ] || die "no linux/: run scripts/prepare.sh"
cd "$LINUX"
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
	die "linux/ has uncommitted changes; commit them first"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=$(git rev-list --count "$BASE_TAG"..HEAD)
if [ "$n" -gt 0 ]; then
	cover=()
	if [ -s "$TOP/patches/cover-letter.txt" ]; then
		git config branch."$(git branch --show-current)".description \
			"$(cat "$TOP/patches/cover-letter.txt")"
		cover=(--cover-letter --cover-from-description=subject)
	fi
	# --zero-commit and a fixed date keep the output independent of when
	# the commits were applied, so that an unchanged series exports
	# byte-for-byte the same.
	GIT_COMMITTER_DATE="2000-01-01T00:00:00Z" \
		git -c core.abbrev=12 format-patch -q --zero-commit --base="$BASE_TAG" "${cover[@]}" \
		--subject-prefix=PATCH -o "$tmp" "$BASE_TAG"..HEAD
	if [ -f "$tmp/0000-cover-letter.patch" ]; then
		sed -i -e '/^Date: /d' -e "s|^base-commit: .*|Base: $(git log -1 --format=%s "$BASE_TAG")\n&|" \
			"$tmp/0000-cover-letter.patch"
	fi
fi
: >"$tmp/series"
for p in "$tmp"/[0-9][0-9][0-9][0-9]-*.patch; do
	[ -e "$p" ] || continue
	case "${p##*/}" in 0000-cover-letter.patch) continue ;; esac
	echo "${p##*/}" >>"$tmp/series"
done
[ ! -s "$TOP/patches/cover-letter.txt" ] || cp "$TOP/patches/cover-letter.txt" "$tmp/"

if diff -r -q "$tmp" "$TOP/patches" >/dev/null 2>&1; then
	echo "patches/ agrees with linux/ ($n patches)"
	exit 0
fi
if [ "$check" = 1 ]; then
	diff -r -u "$TOP/patches" "$tmp" | head -n 40 >&2 || true
	echo "patches/ differs from linux/: run scripts/export.sh" >&2
	exit 1
fi
rm -rf "$TOP/patches"
cp -r "$tmp" "$TOP/patches"
echo "patches/: wrote $n patches"
