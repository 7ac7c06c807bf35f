#!/usr/bin/env bash
# Install what the scripts need from Debian's packages (idempotent).
set -euo pipefail

usage() {
	cat <<USAGE
Usage: ${0##*/} [--help]

Install, with apt-get and only if missing: the kernel build dependencies,
linux-source-6.12 (the pinned source), ccache, QEMU (qemu-system-x86),
busybox-static, libvirt (daemon, QEMU driver, virsh: the QEMU scenario), and
the tools of checkpatch.pl and the scripts. Needs root.
USAGE
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

pkgs=(
	linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev
	dwarves cpio xz-utils gzip file kmod rsync ccache python3 python3-ply
	python3-git perl qemu-system-x86 busybox-static shellcheck gnuplot-nox
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
		missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
	echo "dependencies: all installed"
	exit 0
fi
[ "$(id -u)" = 0 ] || { echo "${0##*/}: need root to install: ${missing[*]}" >&2; exit 1; }
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "dependencies: installed ${#missing[@]} packages"
