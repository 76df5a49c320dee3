#!/usr/bin/env bash
# setup.sh prepares everything the QEMU/TCG suite (go test -tags vmtest
# ./integration/vm/...) needs, and is safe to re-run: each step is skipped
# when its cached output, keyed by a hash of its inputs, already exists.
#
#   integration/vm/setup.sh            tier 1 and tier 2 (about 1 min cold with packages present, up to 4)
#   integration/vm/setup.sh --tier1    tier 1 only: packages + kernel (seconds)
#
# Steps (recipe and timings: shared/reference/vm-testing.md):
#   1. apt packages (--no-install-recommends): qemu-system-x86 busybox-static
#      cpio, and debootstrap for tier 2.
#   2. the Debian cloud kernel, downloaded and unpacked, never installed
#      (installing it would pull udev/initramfs-tools and touch the host's
#      systemd): vmlinuz, its config and the few .ko files the guests load,
#      with their dependencies read from each module's .modinfo.
#   3. tier 2: a Debian bookworm minbase rootfs with systemd (debootstrap,
#      from the mirror apt already uses), customised (gettys masked, empty
#      fstab) and turned into an ext4 image with mke2fs -d.
#   4. integration/.cache/vm/env, which the Go harness reads.
#
# Needs root for apt-get and debootstrap. Output goes to
# integration/.cache/vm (git-ignored), or $VMCRED_VM_CACHE.
set -euo pipefail

tier=2
case "${1:-}" in
--tier1) tier=1 ;;
--all | "") ;;
-h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "usage: $0 [--tier1|--all]" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VMCRED_VM_CACHE:-$repo/integration/.cache/vm}
suite=bookworm
# Modules the guests load (when the kernel has them as =m): AF_VSOCK over
# loopback (CID 1), fw_cfg for the microvm case, virtio disk for tier 2.
want_modules="vsock vmw_vsock_virtio_transport_common vsock_loopback qemu_fw_cfg virtio_pci virtio_blk"
kernel_recipe=1 # bump when the kernel step's output layout changes

export DEBIAN_FRONTEND=noninteractive LC_ALL=C
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one setup at a time per cache

start=$(date +%s.%N)
step_start=$start
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
step() { # step NAME: print the time the previous step took, start a new one
	echo "setup: ${1} ($(elapsed "$step_start") s)"
	step_start=$(date +%s.%N)
}
hash() { sha256sum | cut -c1-16; }
die() { echo "setup: $*" >&2; exit 1; }

# --- 1. packages -------------------------------------------------------------
pkgs="qemu-system-x86 busybox-static cpio"
[ "$tier" = 2 ] && pkgs="$pkgs debootstrap"
missing=""
for p in $pkgs; do
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing="$missing $p"
done
updated=0
apt_update() { [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }; }
if [ -n "$missing" ]; then
	[ "$(id -u)" = 0 ] || die "need root to install:$missing"
	apt_update
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
	step "installed:$missing"
else
	step "packages present: $pkgs"
fi
busybox=/bin/busybox
dpkg-query -S "$busybox" 2>/dev/null | grep -q '^busybox-static:' || die "$busybox is not from busybox-static (a static build is needed)"
qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found"

# --- 2. kernel -----------------------------------------------------------------
# resolve_kernel sets kpkg, kver, abi and the cache folder kdir. The ABI in
# the package name changes with security updates, so it is looked up.
resolve_kernel() {
	kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
	[ -n "$kpkg" ] || return 1
	kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2; exit}')
	abi=${kpkg#linux-image-}
	kdir=$cache/kernel-$abi-$(printf '%s\n' "$kpkg" "$kver" "$want_modules" "$kernel_recipe" | hash)
}
resolve_kernel || { apt_update && resolve_kernel; } || die "cannot resolve linux-image-cloud-amd64"
if [ ! -f "$kdir/.done" ]; then
	tmp=$(mktemp -d "$cache/tmp.kernel.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	chmod 755 "$tmp" # apt-get download runs as _apt when it can
	# Stale package lists name a .deb the mirror no longer has: update once.
	if ! (cd "$tmp" && apt-get download -qq "$kpkg=$kver" >/dev/null 2>&1); then
		apt_update
		resolve_kernel || die "cannot resolve linux-image-cloud-amd64"
		(cd "$tmp" && apt-get download -qq "$kpkg=$kver") || die "apt-get download $kpkg=$kver failed"
	fi
	dpkg-deb -x "$tmp"/*.deb "$tmp/x"
	rm -rf "$kdir"
	mkdir -p "$kdir/modules"
	cp "$tmp/x/boot/vmlinuz-$abi" "$kdir/vmlinuz"
	cp "$tmp/x/boot/config-$abi" "$kdir/config"
	moddir=$tmp/x/lib/modules/$abi
	# Copy a module and, first, what its .modinfo says it depends on (the
	# .deb has no modules.dep: depmod runs at install time). The deps file
	# lists "name dep,dep" in load order; a module absent from it is built in.
	add_module() {
		local m=$1 f deps d
		grep -q "^$m " "$kdir/modules/deps" 2>/dev/null && return 0
		f=$(find "$moddir/kernel" -name "$m.ko" -print -quit)
		if [ -z "$f" ]; then
			grep -q "/$m.ko\$" "$moddir/modules.builtin" || die "module $m: neither a .ko nor built in"
			echo "setup:   $m is built in"
			return 0
		fi
		deps=$(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p' | head -n1)
		for d in ${deps//,/ }; do add_module "$d"; done
		cp "$f" "$kdir/modules/$m.ko"
		echo "$m $deps" >>"$kdir/modules/deps"
	}
	: >"$kdir/modules/deps"
	for m in $want_modules; do add_module "$m"; done
	rm -rf "$tmp"
	trap - EXIT
	touch "$kdir/.done"
	step "kernel $kpkg $kver unpacked: $(ls "$kdir/modules" | grep -c '\.ko$') modules"
else
	step "kernel $kpkg $kver cached"
fi

# --- 3. tier 2 rootfs image ----------------------------------------------------
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 ~ /debian/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv

# customize_rootfs DIR: what turns the debootstrap tree into the test image.
# Its text is part of the image's cache key. minbase has no udev, so a getty
# on ttyS0 (or an fstab entry) would wait 90 s for a .device unit: mask the
# gettys, keep fstab empty; the initramfs mounts / read-write.
customize_rootfs() {
	local r=$1
	for u in serial-getty@.service getty@.service console-getty.service getty.target \
		systemd-firstboot.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer; do
		ln -sf /dev/null "$r/etc/systemd/system/$u"
	done
	: >"$r/etc/fstab"
	echo vmcred-test >"$r/etc/hostname"
	: >"$r/etc/machine-id"
	ln -sf /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
	rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc "$r"/usr/share/man
	mkdir -p "$r/usr/local/bin" "$r/etc/vmcred"
}

bkey=$(printf '%s\n' debootstrap minbase "$suite" "$mirror" "$include" | hash)
bdir=$cache/debootstrap-$bkey
ikey=$(printf '%s\n' "$bkey" "$(declare -f customize_rootfs)" | hash)
image=$cache/rootfs-$ikey.img
if [ "$tier" = 2 ] && [ ! -f "$image" ]; then
	[ "$(id -u)" = 0 ] || die "need root for debootstrap"
	if [ ! -f "$bdir/.done" ]; then
		rm -rf "$bdir"
		echo "setup: debootstrap $suite from $mirror (1-4 min)"
		debootstrap --variant=minbase --include="$include" "$suite" "$bdir/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
			die "debootstrap failed; see $cache/debootstrap.log"
		touch "$bdir/.done"
		step "debootstrap done: $(du -sh "$bdir/rootfs" | cut -f1)"
	fi
	tmp=$(mktemp -d "$cache/tmp.image.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	cp -a "$bdir/rootfs" "$tmp/rootfs"
	customize_rootfs "$tmp/rootfs"
	mb=$(($(du -sm "$tmp/rootfs" | cut -f1) * 13 / 10 + 64))
	mke2fs -q -t ext4 -d "$tmp/rootfs" -L vmcredroot "$tmp/rootfs.img" "${mb}M" >/dev/null
	mv "$tmp/rootfs.img" "$image"
	rm -rf "$tmp"
	trap - EXIT
	step "image $(basename "$image") (${mb} MiB, $(du -sh "$image" | cut -f1) allocated)"
elif [ "$tier" = 2 ]; then
	step "image $(basename "$image") cached"
fi

# Drop outputs of older inputs (another kernel ABI, another recipe).
for d in "$cache"/kernel-* "$cache"/debootstrap-* "$cache"/rootfs-*.img; do
	[ -e "$d" ] || continue
	case "$d" in "$kdir" | "$bdir" | "$image") continue ;; esac
	rm -rf "$d" && echo "setup: removed stale $(basename "$d")"
done

# --- 4. env for the harness ----------------------------------------------------
{
	echo "VMCRED_VM_QEMU=$qemu"
	echo "VMCRED_VM_BUSYBOX=$busybox"
	echo "VMCRED_VM_KERNEL=$kdir/vmlinuz"
	echo "VMCRED_VM_KERNEL_CONFIG=$kdir/config"
	echo "VMCRED_VM_MODULES=$kdir/modules"
	[ -f "$image" ] && echo "VMCRED_VM_ROOTFS=$image"
	echo "VMCRED_VM_KERNEL_PACKAGE=$kpkg $kver"
} >"$cache/env.tmp"
mv "$cache/env.tmp" "$cache/env"
echo "setup: done in $(elapsed "$start") s (tier $tier); wrote $cache/env"
