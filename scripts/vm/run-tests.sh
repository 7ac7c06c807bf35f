#!/bin/sh
# shellcheck shell=dash
# Runs inside the test VM (busybox sh). Usage:
#   run-tests.sh [-m "MODES"] [-f FILTER] LIST...
# Runs every test of the LIST files once per collapse mode and prints KTAP.
# A LIST line is "NAME TIMEOUT COMMAND..." ('#' starts a comment); a NAME
# of the form name@mode[,mode] runs only in those modes. MODES
# defaults to "sync deferred ondemand" when the kernel has
# kvm.collapse_mode, else "-" (an unmodified kernel: run once). FILTER is a
# grep -E pattern on NAME. Exit status: 0 only if no test failed.
# Exit status 4 of a test is the kselftest SKIP.
param=/sys/module/kvm/parameters/collapse_mode
modes=""
filter=""
while [ $# -gt 0 ]; do
	case "$1" in
	-m) modes=$2; shift 2 ;;
	-f) filter=$2; shift 2 ;;
	*) break ;;
	esac
done
if [ -z "$modes" ]; then
	if [ -e $param ]; then modes="sync deferred ondemand"; else modes="-"; fi
fi

tests=$(cat "$@" | sed -e 's/#.*//' -e '/^[[:space:]]*$/d')
[ -n "$filter" ] && tests=$(echo "$tests" | grep -E "^($filter)(@[^[:space:]]*)?[[:space:]]")
# The tests of one mode, names without their @modes.
tests_for() {
	echo "$tests" | while read -r name rest; do
		case "$name" in
		*@*)
			case ",${name#*@}," in
			*",$1,"*) echo "${name%%@*} $rest" ;;
			esac ;;
		*) echo "$name $rest" ;;
		esac
	done
}

n=0
for m in $modes; do
	n=$((n + $(tests_for "$m" | grep -c .)))
done

echo "KTAP version 1"
echo "1..$n"
i=0
failed=0
for m in $modes; do
	if [ "$m" != "-" ]; then
		echo "$m" >$param || { echo "# cannot set collapse_mode=$m"; exit 1; }
		suffix=" [$m]"
	else
		suffix=""
	fi
	while read -r name tmo cmd; do
		[ -n "$name" ] || continue
		i=$((i + 1))
		echo "# $name$suffix: $cmd"
		start=$(date +%s)
		# busybox sh has no PIPESTATUS: the status goes through a file.
		rm -f /tmp/rc
		{
			timeout "$tmo" sh -c "$cmd" 2>&1 </dev/null
			echo $? >/tmp/rc
		} | sed 's/^/# /'
		rc=$(cat /tmp/rc 2>/dev/null || echo 255)
		echo "# $name$suffix: exit $rc after $(($(date +%s) - start)) s"
		case "$rc" in
		0) echo "ok $i $name$suffix" ;;
		4) echo "ok $i $name$suffix # SKIP" ;;
		*) echo "not ok $i $name$suffix"; failed=$((failed + 1)) ;;
		esac
	done <<-TESTS
	$(tests_for "$m")
	TESTS
done
[ "$failed" = 0 ]
