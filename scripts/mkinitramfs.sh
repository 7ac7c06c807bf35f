#!/usr/bin/env bash
# Pack busybox, the built selftests and our VM-side scripts into an initramfs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--help]

Write build/initramfs.cpio.gz: busybox-static, scripts/vm/ (init and the
test runner), scripts/tests/*.list, scripts/vmm/ (the QEMU scenario, its guest
built here), the KVM selftest binaries of
build/kselftest/kvm/ and the shared libraries that ldd lists for them.
scripts/boot.sh appends the command to run as a second archive.
USAGE
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

kst="$BUILD/kselftest/kvm"
[ -d "$kst" ] || die "no $kst: run scripts/build-selftests.sh"
busybox=$(command -v busybox) || die "busybox missing: run scripts/install-deps.sh"
file -L "$busybox" | grep -q 'statically linked' || die "$busybox is not static (install busybox-static)"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lazy}
cp "$busybox" "$root/bin/busybox"
cp "$TOP/scripts/vm/init" "$root/init"
cp "$TOP"/scripts/vm/*.sh "$root/lazy/"
cp "$TOP"/scripts/tests/*.list "$root/lazy/"
chmod +x "$root/init" "$root"/lazy/*.sh

# The QEMU scenario (scripts/tests/vmm.list): its driver and its guest, a
# multiboot payload that QEMU boots in no time.
mkdir -p "$root/lazy/vmm" "$BUILD/vmm"
gcc -m64 -O2 -Wall -Wextra -Werror -ffreestanding -fno-pic -fno-pie \
	-no-pie -static --param=min-pagesize=0 -mno-red-zone \
	-mgeneral-regs-only -fno-stack-protector \
	-fno-asynchronous-unwind-tables -nostdlib \
	-Wl,-T,"$TOP/scripts/vmm/guest.ld" -Wl,--build-id=none \
	-Wl,-z,max-page-size=4096 -Wl,--no-warn-rwx-segments \
	-o "$BUILD/vmm/guest64.elf" "$TOP/scripts/vmm/guest.c"
# QEMU loads only 32-bit multiboot ELFs (as kvm-unit-tests does).
objcopy -O elf32-i386 "$BUILD/vmm/guest64.elf" "$BUILD/vmm/guest.elf"
cp "$BUILD/vmm/guest.elf" "$TOP"/scripts/vmm/{run.sh,scenario.py} "$root/lazy/vmm/"

bins=()
while IFS= read -r f; do
	rel=${f#"$kst"/}
	mkdir -p "$root/lazy/$(dirname "$rel")"
	cp "$f" "$root/lazy/$rel"
	bins+=("$f")
done < <(find "$kst" -maxdepth 2 -type f -perm -u+x ! -name '*.o' ! -name '*.sh')
[ "${#bins[@]}" -gt 0 ] || die "no selftest binaries in $kst"
# Linux 6.13 moved the x86 selftests from x86_64/ to x86/; the lists name
# x86_64/, which then leads there.
[ ! -d "$root/lazy/x86" ] || [ -e "$root/lazy/x86_64" ] || ln -s x86 "$root/lazy/x86_64"

# The libraries the binaries need, at the paths the loader looks for them.
ldd "${bins[@]}" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u | while read -r lib; do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done
[ -e "$root/lib64" ] || ln -s lib "$root/lib64" 2>/dev/null || true

(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -1 >"$BUILD/initramfs.cpio.gz"
log "initramfs: ${#bins[@]} binaries, $(du -h "$BUILD/initramfs.cpio.gz" | cut -f1)"
echo "$BUILD/initramfs.cpio.gz"
