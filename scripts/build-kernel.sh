#!/usr/bin/env bash
# Configure and build linux/ out of tree, with ccache.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
	cat <<USAGE
Usage: ${0##*/} [--config NAME] [--vmlinux] [--help]

Build linux/ into build/NAME/ (default NAME: test): 'make tinyconfig', then
the fragments scripts/configs/test.config (and scripts/configs/NAME.config for another NAME,
then scripts/configs/linux-MAJOR.MINOR.config for the kernel version if there is one)
merged with the kernel's scripts/kconfig/merge_config.sh, then bzImage.
Every option a fragment sets is checked in the final .config (merge_config.sh
only warns when a dependency drops one). A config with CONFIG_MODULES=y
also gets its modules installed in build/NAME/modinst/. Prints the bzImage
path.
  --vmlinux   stop at vmlinux (no compressed bzImage): enough to know that
              the tree builds and links, and faster
Environment: JOBS (default: nproc), CCACHE_DIR.
USAGE
}

cfg="test" target=bzImage
while [ $# -gt 0 ]; do
	case "$1" in
	--config) cfg=${2:?}; shift ;;
	--vmlinux) target=vmlinux ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

[ -d "$LINUX" ] || die "no $(tree_name): run TARGET=$TARGET scripts/prepare.sh"
frags=("$TOP/scripts/configs/test.config")
[ "$cfg" = test ] || frags+=("$TOP/scripts/configs/$cfg.config")
# What one kernel version spells differently: linux-MAJOR.MINOR.config, last.
kv=$(make -s -C "$LINUX" kernelversion | cut -d. -f1-2)
[ ! -r "$TOP/scripts/configs/linux-$kv.config" ] ||
	frags+=("$TOP/scripts/configs/linux-$kv.config")
for f in "${frags[@]}"; do [ -r "$f" ] || die "no fragment $f"; done

out="$BUILD/$cfg"
mkdir -p "$out"
cc="gcc"
command -v ccache >/dev/null && cc="ccache gcc"
mk=(make -s -C "$LINUX" O="$out" CC="$cc" -j"$JOBS")

# Regenerate .config only when a fragment changed: it keeps the incremental
# rebuild incremental.
stamp="$out/.fragments"
if ! cat "${frags[@]}" | cmp -s - "$stamp" || [ ! -f "$out/.config" ]; then
	log "configuring $cfg"
	"${mk[@]}" tinyconfig >/dev/null
	(cd "$out" && KCONFIG_CONFIG=.config \
		"$LINUX/scripts/kconfig/merge_config.sh" -m -O "$out" .config "${frags[@]}" >/dev/null)
	"${mk[@]}" olddefconfig >/dev/null
	# Check that every setting of the fragments survived; a later
	# fragment overrides an earlier one, as in merge_config.sh.
	declare -A wanted=()
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*) opt=${line%%=*} ;;
		"# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *} ;;
		*) continue ;;
		esac
		wanted[$opt]=$line
	done < <(cat "${frags[@]}")
	bad=0
	for opt in "${!wanted[@]}"; do
		want=${wanted[$opt]}
		got=$(grep -E "^($opt=|# $opt is not set)" "$out/.config" || true)
		if [ "$want" != "$got" ] && ! { [ -z "$got" ] && [ "${want#\# }" != "$want" ]; }; then
			echo "config $cfg: wanted '$want', got '${got:-unset}'" >&2
			bad=1
		fi
	done
	[ "$bad" = 0 ] || die "fragment settings were dropped; fix scripts/configs/"
	cat "${frags[@]}" >"$stamp"
fi

log "building $cfg kernel in $out"
"${mk[@]}" "$target"
# A modular KVM (scripts/configs/modules.config): the modules, installed under
# build/NAME/modinst/ for the VM to load over 9p (scripts/vm/kvm-modules.sh).
if [ "$target" != vmlinux ] && grep -q '^CONFIG_MODULES=y' "$out/.config"; then
	"${mk[@]}" modules
	rm -rf "$out/modinst"
	"${mk[@]}" INSTALL_MOD_PATH="$out/modinst" INSTALL_MOD_STRIP=1 \
		DEPMOD=true modules_install >/dev/null
fi
if [ "$target" = vmlinux ]; then
	echo "$out/vmlinux"
else
	echo "$out/arch/x86/boot/bzImage"
fi
