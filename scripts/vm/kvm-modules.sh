#!/bin/sh
# shellcheck shell=dash
# Runs inside the test VM of the "modules" stage (scripts/test.sh): a kernel
# whose KVM is built as modules (scripts/configs/modules.config). The modules are
# read from the host's build directory over 9p (init mounts the host's root
# on /host): lazy_modules=DIR on the kernel command line names
# DIR/lib/modules/<release>/ (set by test.sh).
#   kvm-modules.sh load    insmod irqbypass (if a module), kvm, kvm-amd
#                          (kvm-intel on an Intel host)
#   kvm-modules.sh check   kvm.collapse_* given to insmod: bad values make
#                          the load fail with the parameter's errno and
#                          leave no kvm loaded; good ones read back exactly;
#                          the defaults without parameters
#   kvm-modules.sh reload  rmmod kvm-amd and kvm (right after VMs died with
#                          a collapse pending or running), wait out the
#                          longest delay a collapse of theirs could have had
#                          queued, insmod again
# check and reload leave kvm loaded in the collapse mode they found.
set -u
mnt=/host
dir=$(sed -n 's/.*lazy_modules=\([^ ]*\).*/\1/p' /proc/cmdline)
fail=0

die() {
	echo "kvm-modules.sh: $*"
	exit 1
}

[ -n "$dir" ] || die "no lazy_modules= on the kernel command line"
grep -q " $mnt 9p " /proc/mounts ||
	die "no host root on $mnt (scripts/boot.sh shares it over 9p, init mounts it)"
kdir=$mnt$dir/lib/modules/$(uname -r)/kernel
[ -d "$kdir" ] || die "no modules for $(uname -r) in $kdir"
kvm=$kdir/arch/x86/kvm
vendor="kvm-amd"
grep -q GenuineIntel /proc/cpuinfo && vendor="kvm-intel"
p=/sys/module/kvm/parameters

loaded() { [ -d "/sys/module/$1" ]; }

load() { # kvm's parameters...
	if [ -f "$kdir/virt/lib/irqbypass.ko" ] && ! loaded irqbypass; then
		insmod "$kdir/virt/lib/irqbypass.ko" || return 1
	fi
	insmod "$kvm/kvm.ko" "$@" || return 1
	insmod "$kvm/$vendor.ko" || return 1
	[ -c /dev/kvm ] || { echo "# no /dev/kvm after loading $vendor"; return 1; }
}

unload() {
	rmmod "$(echo $vendor | tr - _)" && rmmod kvm && ! loaded kvm
}

expect() { # what got want
	if [ "$2" = "$3" ]; then
		echo "# ok: $1: $2"
	else
		echo "# FAIL: $1: got '$2', want '$3'"
		fail=1
	fi
}

# A load that must fail: "param=value" and the errno text insmod prints.
bad() { # param=value error-text
	if out=$(insmod "$kvm/kvm.ko" "$1" 2>&1); then
		echo "# FAIL: insmod kvm.ko '$1' succeeded"
		fail=1
		rmmod kvm
		return
	fi
	if loaded kvm; then
		echo "# FAIL: kvm loaded after insmod '$1' failed"
		fail=1
	fi
	case "$out" in
	*"$2"*) echo "# ok: insmod kvm.ko '$1': $out" ;;
	*) echo "# FAIL: insmod kvm.ko '$1': '$out', want '$2'"; fail=1 ;;
	esac
}

case "${1:-}" in
load)
	loaded kvm || load || die "cannot load KVM's modules"
	echo "# loaded: $(lsmod | awk 'NR > 1 { printf "%s ", $1 }')"
	;;
check)
	mode=$(cat $p/collapse_mode)
	unload || die "cannot unload kvm"
	bad collapse_mode=bogus "Invalid argument"
	bad collapse_mode=deferredx "Invalid argument"
	bad collapse_delay_ms=-1 "Invalid argument"
	bad collapse_delay_ms=10s "Invalid argument"
	bad collapse_delay_ms=3600001 "Invalid argument"
	bad collapse_delay_ms=99999999999 "out of range"
	bad collapse_batch=0 "Invalid argument"
	bad collapse_batch=262145 "Invalid argument"
	bad collapse_batch=8x "Invalid argument"
	bad collapse_pause_pct=10001 "Invalid argument"
	bad collapse_pause_pct=-1 "Invalid argument"
	dmesg | grep -E "invalid for parameter .collapse_" | tail -n 3 | sed 's/^/# dmesg: /'
	load collapse_mode=ondemand collapse_delay_ms=3600000 collapse_batch=262144 \
		collapse_pause_pct=10000 ||
		die "insmod with good values failed"
	expect "collapse_mode=ondemand" "$(cat $p/collapse_mode)" ondemand
	expect "collapse_delay_ms=3600000" "$(cat $p/collapse_delay_ms)" 3600000
	expect "collapse_batch=262144" "$(cat $p/collapse_batch)" 262144
	expect "collapse_pause_pct=10000" "$(cat $p/collapse_pause_pct)" 10000
	unload || die "cannot unload kvm"
	load || die "insmod without parameters failed"
	expect "default collapse_mode" "$(cat $p/collapse_mode)" sync
	expect "default collapse_delay_ms" "$(cat $p/collapse_delay_ms)" 10000
	expect "default collapse_batch" "$(cat $p/collapse_batch)" 64
	expect "default collapse_pause_pct" "$(cat $p/collapse_pause_pct)" 0
	echo "$mode" >$p/collapse_mode
	;;
reload)
	mode=$(cat $p/collapse_mode)
	delay=$(cat $p/collapse_delay_ms)
	unload || die "cannot unload kvm right after its VMs died"
	echo "# unloaded; waiting $((delay / 1000 + 2)) s for any collapse left queued"
	sleep $((delay / 1000 + 2))
	load collapse_mode="$mode" || die "cannot load kvm again"
	expect "collapse_mode after reload" "$(cat $p/collapse_mode)" "$mode"
	;;
*)
	die "usage: kvm-modules.sh load|check|reload"
	;;
esac
exit $fail
