#!/bin/sh
# shellcheck shell=dash
# Runs inside the test VM (busybox sh): scripts/vmm/scenario.py, a QEMU
# live migration that fails or is cancelled, in a chroot of the host's
# root, shared read-only over 9p by scripts/boot.sh (mount tag hostroot).
# Arguments go to scenario.py. Exit status 4 (SKIP) without the host root.
root=/host
tag=hostroot
if ! grep -q " $root 9p " /proc/mounts; then
	if ! grep -qs "$tag" /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; then
		echo "# no 9p share '$tag' (scripts/boot.sh shares the host's root)"
		exit 4
	fi
	mkdir -p $root
	mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 \
		$tag $root || exit 1
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
