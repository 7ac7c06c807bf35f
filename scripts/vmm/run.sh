#!/bin/sh
# shellcheck shell=dash
# Runs inside the test VM (busybox sh): scripts/vmm/scenario.py, a QEMU
# live migration that fails or is cancelled, in a chroot of the host's
# root, shared read-only over 9p by scripts/boot.sh and mounted on /host
# by init.
# Arguments go to scenario.py. Exit status 4 (SKIP) without the host root.
root=/host
if ! grep -q " $root 9p " /proc/mounts; then
	echo "# no host root on $root (scripts/boot.sh shares it over 9p, init mounts it)"
	exit 4
fi
if ! grep -q " $root/proc proc " /proc/mounts; then
	mount -t proc proc $root/proc &&
		mount -t sysfs sysfs $root/sys &&
		mount -t debugfs debugfs $root/sys/kernel/debug &&
		mount -o bind /dev $root/dev &&
		mount -t tmpfs tmpfs $root/tmp &&
		mount -t tmpfs tmpfs $root/run || exit 1
fi
# --libvirt: QEMU runs as user nobody, under a session libvirtd.
chmod 666 /dev/kvm
mkdir -p $root/tmp/vmm-bin
cp /lazy/vmm/scenario.py /lazy/vmm/guest.elf $root/tmp/vmm-bin/ || exit 1
exec chroot $root /usr/bin/python3 /tmp/vmm-bin/scenario.py "$@"
