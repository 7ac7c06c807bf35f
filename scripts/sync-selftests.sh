#!/usr/bin/env bash
# Copy this repository's selftests into linux/ and fold them into the series.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SUBJECT="KVM: selftests: Add lazy huge page collapse tests"
MSG="$TOP/scripts/selftests-commit.txt"
KSFT=tools/testing/selftests/kvm

usage() {
	cat <<USAGE
Usage: ${0##*/} [--check] [--help]

The selftests live in this repository at $KSFT/ (one source of
truth). Copy them into linux/$KSFT/, register every
x86_64/*.c test program in linux/$KSFT/Makefile
(TEST_GEN_PROGS_x86_64, alphabetical, as upstream would post it), and
record the result in linux/ as the commit
  "$SUBJECT"
(created at the end of the series the first time, amended or fixed up and
autosquashed in place afterwards). Does nothing when linux/ already agrees.
  --check   change nothing; exit 1, naming what differs, if linux/ does not
            agree.
USAGE
}

check=0
case "${1:-}" in
-h | --help) usage; exit 0 ;;
--check) check=1 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

[ -d "$LINUX/.git" ] || die "no $(tree_name): run TARGET=$TARGET scripts/prepare.sh"
[ -d "$TOP/$KSFT" ] || exit 0

# Where the kernel keeps its x86 selftests: Linux 6.13 moved them from
# x86_64/ (listed in Makefile) to x86/ (listed in Makefile.kvm). Ours are
# kept at x86_64/ here and go wherever the kernel's are.
if [ -d "$LINUX/$KSFT/x86" ]; then
	arch=x86 mkfile=Makefile.kvm
else
	arch=x86_64 mkfile=Makefile
fi
var=TEST_GEN_PROGS_$arch
dest() { echo "$arch/${1#x86_64/}"; } # path here -> path in linux/

cd "$TOP/$KSFT"
files=$(find . -type f ! -name '.*' | sed 's|^\./||' | sort)
[ -n "$files" ] || exit 0
if [ "$check" = 1 ]; then
	differ=0
	for f in $files; do
		d=$(dest "$f")
		cmp -s "$f" "$LINUX/$KSFT/$d" || { echo "differs: $KSFT/$d"; differ=1; }
		case "$f" in x86_64/*.c) ;; *) continue ;; esac
		grep -q "^$var += ${d%.c}\$" "$LINUX/$KSFT/$mkfile" ||
			{ echo "not in $KSFT/$mkfile: ${d%.c}"; differ=1; }
	done
	[ -z "$(git -C "$LINUX" status --porcelain --untracked-files=no -- "$KSFT")" ] ||
		{ echo "uncommitted in linux/: $KSFT"; differ=1; }
	exit "$differ"
fi
for f in $files; do
	d=$(dest "$f")
	mkdir -p "$LINUX/$KSFT/$(dirname "$d")"
	cmp -s "$f" "$LINUX/$KSFT/$d" || cp "$f" "$LINUX/$KSFT/$d"
done

# Register each test program of ours, keeping the list sorted the way
# upstream keeps it: insert before the first entry that sorts after it.
mk="$LINUX/$KSFT/$mkfile"
for f in $files; do
	case "$f" in x86_64/*.c) ;; *) continue ;; esac
	prog=$(dest "${f%.c}")
	grep -q "^$var += $prog\$" "$mk" && continue
	awk -v var="$var" -v arch="$arch" -v prog="$prog" '
		!done && $1 == var && $2 == "+=" && index($3, arch "/") == 1 &&
		    $3 > prog {
			print var " += " prog; done = 1
		}
		{ print }
		END { if (!done) exit 1 }' "$mk" >"$mk.new" || die "cannot register $prog"
	mv "$mk.new" "$mk"
done

# The message names the tests by their path in the kernel.
msg=$(mktemp)
trap 'rm -f "$msg"' EXIT
sed "s|x86_64/|$arch/|g" "$MSG" >"$msg"

cd "$LINUX"
# -f: Debian's top-level .gitignore ignores everything.
for f in $files; do git add -f "$KSFT/$(dest "$f")"; done
git add -f "$KSFT/$mkfile"
sha=$(git log --format=%H --fixed-strings --grep="$SUBJECT" "$BASE_TAG"..HEAD | head -n1)
# The message as scripts/selftests-commit.txt and 'git commit -s' make it.
want_msg="$(git stripspace <"$msg")

Signed-off-by: $(git var GIT_COMMITTER_IDENT | sed 's/>.*/>/')"
if git diff --cached --quiet; then
	# Same files; only the message may have changed (at the top only).
	if [ -n "$sha" ] && [ "$sha" = "$(git rev-parse HEAD)" ] &&
		[ "$(git log -1 --format=%B HEAD | git stripspace)" != "$want_msg" ]; then
		git commit -q --amend -s -F "$msg"
		log "linux/: reworded '$SUBJECT'"
	fi
	exit 0
fi

if [ -z "$sha" ]; then
	git commit -q -s -F "$msg"
	log "linux/: added '$SUBJECT'"
elif [ "$sha" = "$(git rev-parse HEAD)" ]; then
	git commit -q --amend -s -F "$msg"
	log "linux/: amended '$SUBJECT'"
else
	git commit -q --fixup="$sha"
	GIT_SEQUENCE_EDITOR=: git rebase -q -i --autosquash "$sha^"
	log "linux/: folded the selftests into '$SUBJECT'"
fi
