#!/usr/bin/env bash
# setup.sh prepares everything the QEMU/TCG suite (go test -tags vmtest
# ./integration/vm/...) needs, and is safe to re-run: each step is skipped
# when its cached output, keyed by a hash of its inputs, already exists.
#
#   integration/vm/setup.sh            tier 1 (x86_64, aarch64) and tier 2 (every suite)
#   integration/vm/setup.sh --tier1    tier 1 only: packages + kernels (seconds)
#
#   VMCRED_VM_SUITES   tier-2 Debian suites (default "bookworm trixie sid":
#                      systemd 252, 257 and the newest Debian has; see below)
#   VMCRED_VM_ARCHES   tier-1 guest architectures (default "x86_64 aarch64")
#
# Steps (recipe and timings: shared/reference/vm-testing.md):
#   1. apt packages (--no-install-recommends): qemu-system-x86 busybox-static
#      cpio, qemu-system-arm qemu-efi-aarch64 for aarch64, debootstrap for tier 2.
#   2. the Debian cloud kernel, downloaded and unpacked, never installed
#      (installing it would pull udev/initramfs-tools and touch the host's
#      systemd): vmlinuz, its config and the few .ko files the guests load,
#      with their dependencies read from each module's .modinfo. For
#      aarch64 also a static arm64 busybox; both come from a private apt
#      list in the cache (Architecture=arm64), so the host's dpkg gets no
#      foreign architecture and its sources stay bookworm only.
#   3. tier 2, per suite: a Debian minbase rootfs with systemd (debootstrap,
#      from the mirror apt already uses; the suites at once, started before
#      the kernel steps), customised (gettys masked, empty fstab) and turned
#      into an ext4 image with mke2fs -d. "sid" is where
#      Debian's newest systemd is: trixie-backports has none, forky
#      (testing) lags sid (262-1 against 262.1-1 when this was written).
#   4. integration/.cache/vm/env (x86_64 tier 1 and the bookworm image, as
#      before), env.tier2 (one line per suite: suite, systemd version,
#      image) and env.aarch64, which the Go harness reads.
#
# Needs root for apt-get and debootstrap. Output goes to
# integration/.cache/vm (git-ignored), or $VMCRED_VM_CACHE.
set -euo pipefail

tier=2
case "${1:-}" in
--tier1) tier=1 ;;
--all | "") ;;
-h | --help) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "usage: $0 [--tier1|--all]" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VMCRED_VM_CACHE:-$repo/integration/.cache/vm}
suites=${VMCRED_VM_SUITES:-bookworm trixie sid}
arches=${VMCRED_VM_ARCHES:-x86_64 aarch64}
has_arch() { case " $arches " in *" $1 "*) return 0 ;; esac; return 1; }
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
# die also stops the debootstraps still running (their PIDs, nothing else).
die() {
	echo "setup: $*" >&2
	for j in ${debootstrap_jobs:-}; do kill "${j%%:*}" 2>/dev/null || true; done
	exit 1
}

# --- 1. packages -------------------------------------------------------------
pkgs="qemu-system-x86 busybox-static cpio"
has_arch aarch64 && pkgs="$pkgs qemu-system-arm qemu-efi-aarch64"
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

mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb" && $0 ~ /debian/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

# --- 2. tier 2 debootstraps, started now, awaited in step 4 -------------------
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

# image_paths SUITE sets sdir, bdir (the debootstrap tree) and image, and
# takes over the bookworm outputs of the layout before.
image_paths() {
	local bkey ikey
	sdir=$cache/systemd/$1
	bkey=$(printf '%s\n' debootstrap minbase "$1" "$mirror" "$include" | hash)
	bdir=$sdir/debootstrap-$bkey
	ikey=$(printf '%s\n' "$bkey" "$(declare -f customize_rootfs)" | hash)
	image=$sdir/rootfs-$ikey.img
	mkdir -p "$sdir"
	if [ ! -f "$bdir/.done" ] && [ -f "$cache/debootstrap-$bkey/.done" ]; then
		rm -rf "$bdir" && cp -al "$cache/debootstrap-$bkey" "$bdir"
	fi
	if [ ! -f "$image" ] && [ -f "$cache/rootfs-$ikey.img" ]; then
		ln "$cache/rootfs-$ikey.img" "$image"
	fi
	return 0
}

# debootstrap_start: the debootstraps every missing image needs, all suites
# at once and alongside the kernel steps (they wait on the mirror as much
# as on the CPU: a cold setup takes the longest one's time, not the sum);
# debootstrap_wait waits for them.
debootstrap_jobs=""
debootstrap_t0=0
debootstrap_start() {
	local suite
	debootstrap_t0=$(date +%s.%N)
	for suite in $suites; do
		image_paths "$suite"
		[ -f "$image" ] || [ -f "$bdir/.done" ] && continue
		[ "$(id -u)" = 0 ] || die "need root for debootstrap"
		rm -rf "$bdir"
		echo "setup: debootstrap $suite from $mirror (1-4 min; suites in parallel)"
		debootstrap --variant=minbase --include="$include" "$suite" "$bdir/rootfs" "$mirror" >"$sdir/debootstrap.log" 2>&1 &
		debootstrap_jobs="$debootstrap_jobs $!:$suite"
	done
}
debootstrap_wait() {
	local j jobs=$debootstrap_jobs
	for j in $jobs; do
		wait "${j%%:*}" || die "debootstrap ${j#*:} failed; see $cache/systemd/${j#*:}/debootstrap.log"
		image_paths "${j#*:}"
		touch "$bdir/.done"
	done
	debootstrap_jobs=""
	[ -z "$jobs" ] || step "debootstrap done, $(elapsed "$debootstrap_t0") s after it started:$(for j in $jobs; do image_paths "${j#*:}"; printf ' %s %s' "${j#*:}" "$(du -sh "$bdir/rootfs" | cut -f1)"; done)"
}

[ "$tier" = 2 ] && debootstrap_start

# --- 3. kernels ----------------------------------------------------------------
# add_module M: copy module M from $moddir into $kdir/modules and, first,
# what its .modinfo says it depends on (the .deb has no modules.dep: depmod
# runs at install time). The deps file lists "name dep,dep" in load order; a
# module absent from it is built in.
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
	: >"$kdir/modules/deps"
	for m in $want_modules; do add_module "$m"; done
	rm -rf "$tmp"
	trap - EXIT
	touch "$kdir/.done"
	step "kernel $kpkg $kver unpacked: $(ls "$kdir/modules" | grep -c '\.ko$') modules"
else
	step "kernel $kpkg $kver cached"
fi
x86_kdir=$kdir x86_kpkg="$kpkg $kver"


# aarch64: the arm64 cloud kernel (an uncompressed Image with the EFI stub,
# so it boots both directly and from edk2) and a static arm64 busybox, from
# a private apt list in the cache. Never dpkg --add-architecture.
arm_modules="vsock vmw_vsock_virtio_transport_common vsock_loopback qemu_fw_cfg"
arm_kdir=""
if has_arch aarch64; then
	adir=$cache/aarch64
	mkdir -p "$adir/apt/lists/partial" "$adir/apt/cache/archives/partial"
	# The host's own suites (bookworm, -updates, -security: the kernel ABI
	# then matches the x86_64 one), from its deb822 sources.
	awk '/^URIs:/{u=$2} /^Suites:/{$1=""; s=$0} /^Components:/{$1=""; c=$0}
		/^$/{if (u!="") for (i=split(s,a," "); i>0; i--) print "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]", u, a[i], c; u=""}
		END{if (u!="") for (i=split(s,a," "); i>0; i--) print "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]", u, a[i], c}' \
		/etc/apt/sources.list.d/debian.sources 2>/dev/null >"$adir/apt/sources.list.tmp" || true
	[ -s "$adir/apt/sources.list.tmp" ] || echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main" >"$adir/apt/sources.list.tmp"
	if ! cmp -s "$adir/apt/sources.list.tmp" "$adir/apt/sources.list"; then
		mv "$adir/apt/sources.list.tmp" "$adir/apt/sources.list"
		rm -rf "$adir/apt/lists" && mkdir -p "$adir/apt/lists/partial"
	fi
	rm -f "$adir/apt/sources.list.tmp"
	arm_apt="-o Dir::Etc::SourceList=$adir/apt/sources.list -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists=$adir/apt/lists
		-o Dir::Cache=$adir/apt/cache -o Dir::State::Status=/dev/null -o APT::Architecture=arm64 -o APT::Architectures::=arm64"
	arm_resolve() {
		kpkg=$(apt-cache $arm_apt depends linux-image-cloud-arm64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}' || true)
		[ -n "$kpkg" ] || return 1
		kver=$(apt-cache $arm_apt policy "$kpkg" | awk '/Candidate:/{print $2; exit}')
		bver=$(apt-cache $arm_apt policy busybox-static | awk '/Candidate:/{print $2; exit}')
		abi=${kpkg#linux-image-}
		kdir=$adir/kernel-$abi-$(printf '%s\n' "$kpkg" "$kver" "$bver" "$arm_modules" "$kernel_recipe" | hash)
	}
	arm_update() { apt-get $arm_apt update -qq || die "apt-get update (arm64 list) failed"; }
	arm_resolve || { arm_update && arm_resolve; } || die "cannot resolve linux-image-cloud-arm64"
	if [ ! -f "$kdir/.done" ]; then
		tmp=$(mktemp -d "$cache/tmp.arm.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		chmod 777 "$tmp"
		if ! (cd "$tmp" && apt-get $arm_apt download -qq "$kpkg=$kver" "busybox-static=$bver" >/dev/null 2>&1); then
			arm_update
			arm_resolve || die "cannot resolve linux-image-cloud-arm64"
			(cd "$tmp" && apt-get $arm_apt download -qq "$kpkg=$kver" "busybox-static=$bver") || die "apt-get download (arm64) failed"
		fi
		dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/x"
		dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/bb"
		rm -rf "$kdir"
		mkdir -p "$kdir/modules"
		cp "$tmp/x/boot/vmlinuz-$abi" "$kdir/vmlinuz"
		cp "$tmp/x/boot/config-$abi" "$kdir/config"
		cp "$tmp/bb/bin/busybox" "$kdir/busybox"
		moddir=$tmp/x/lib/modules/$abi
		: >"$kdir/modules/deps"
		for m in $arm_modules; do add_module "$m"; done
		rm -rf "$tmp"
		trap - EXIT
		touch "$kdir/.done"
		step "aarch64: kernel $kpkg $kver and busybox-static $bver unpacked"
	else
		step "aarch64: kernel $kpkg $kver cached"
	fi
	arm_kdir=$kdir arm_kpkg="$kpkg $kver"
	for d in "$adir"/kernel-*; do
		[ "$d" = "$arm_kdir" ] || { rm -rf "$d" && echo "setup: removed stale aarch64/$(basename "$d")"; }
	done
	command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 not found"
	[ -f /usr/share/qemu-efi-aarch64/QEMU_EFI.fd ] || die "no /usr/share/qemu-efi-aarch64/QEMU_EFI.fd (qemu-efi-aarch64)"
fi

# build_image SUITE: sets image and sysver. Images live in
# systemd/SUITE/; the bookworm one of the layout before (debootstrap-KEY/
# and rootfs-KEY.img at the top, same keys) is hard-linked, not rebuilt.
# Keyed by what built it (suite, mirror, packages, customize_rootfs); a
# suite's packages change under the same key, so sysver is read from the
# tree itself and printed with each test.
build_image() {
	local suite=$1 mb tmp d
	image_paths "$suite"
	if [ ! -f "$image" ]; then
		[ "$(id -u)" = 0 ] || die "need root for debootstrap"
		if [ ! -f "$bdir/.done" ]; then
			rm -rf "$bdir"
			echo "setup: debootstrap $suite from $mirror (1-4 min)"
			debootstrap --variant=minbase --include="$include" "$suite" "$bdir/rootfs" "$mirror" >"$sdir/debootstrap.log" 2>&1 ||
				die "debootstrap $suite failed; see $sdir/debootstrap.log"
			touch "$bdir/.done"
			step "debootstrap $suite done: $(du -sh "$bdir/rootfs" | cut -f1)"
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
		step "image $suite/$(basename "$image") (${mb} MiB, $(du -sh "$image" | cut -f1) allocated)"
	else
		step "image $suite/$(basename "$image") cached"
	fi
	sysver=$(dpkg-query --admindir="$bdir/rootfs/var/lib/dpkg" -W -f='${Version}' systemd 2>/dev/null) ||
		die "$suite: no systemd in $bdir/rootfs"
	# Drop this suite's outputs of older inputs.
	for d in "$sdir"/debootstrap-* "$sdir"/rootfs-*.img; do
		[ -e "$d" ] || continue
		case "$d" in "$bdir" | "$image") continue ;; esac
		rm -rf "$d" && echo "setup: removed stale $suite/$(basename "$d")"
	done
}

# --- 4. tier 2 rootfs images, one per suite ------------------------------------
images=""
if [ "$tier" = 2 ]; then
	debootstrap_wait
	for suite in $suites; do
		build_image "$suite"
		images="$images$suite $sysver $image
"
	done
fi

# Drop kernels of older inputs (another ABI, another recipe). The top-level
# debootstrap-*/rootfs-*.img of the layout before stay: an older setup.sh
# sharing this cache still uses them.
for d in "$cache"/kernel-*; do
	[ -e "$d" ] || continue
	[ "$d" = "$x86_kdir" ] || { rm -rf "$d" && echo "setup: removed stale $(basename "$d")"; }
done

# --- 5. env for the harness ----------------------------------------------------
bookworm=$(printf '%s' "$images" | awk '$1=="bookworm"{print $3}')
{
	echo "VMCRED_VM_QEMU=$qemu"
	echo "VMCRED_VM_BUSYBOX=$busybox"
	echo "VMCRED_VM_KERNEL=$x86_kdir/vmlinuz"
	echo "VMCRED_VM_KERNEL_CONFIG=$x86_kdir/config"
	echo "VMCRED_VM_MODULES=$x86_kdir/modules"
	[ -n "$bookworm" ] && echo "VMCRED_VM_ROOTFS=$bookworm"
	echo "VMCRED_VM_KERNEL_PACKAGE=$x86_kpkg"
} >"$cache/env.tmp"
mv "$cache/env.tmp" "$cache/env"
# env.tier2: "SUITE SYSTEMD-VERSION IMAGE" per line. Written only by a
# tier-2 setup, so that --tier1 keeps the images a full setup listed.
if [ "$tier" = 2 ]; then
	printf '%s' "$images" >"$cache/env.tier2.tmp"
	mv "$cache/env.tier2.tmp" "$cache/env.tier2"
fi
if [ -n "$arm_kdir" ]; then
	{
		echo "VMCRED_VM_QEMU=$(command -v qemu-system-aarch64)"
		echo "VMCRED_VM_BUSYBOX=$arm_kdir/busybox"
		echo "VMCRED_VM_KERNEL=$arm_kdir/vmlinuz"
		echo "VMCRED_VM_KERNEL_CONFIG=$arm_kdir/config"
		echo "VMCRED_VM_MODULES=$arm_kdir/modules"
		echo "VMCRED_VM_KERNEL_PACKAGE=$arm_kpkg"
		echo "VMCRED_VM_EFI=/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"
	} >"$cache/env.aarch64.tmp"
	mv "$cache/env.aarch64.tmp" "$cache/env.aarch64"
else
	rm -f "$cache/env.aarch64"
fi
echo "setup: done in $(elapsed "$start") s (tier $tier; suites: $(printf '%s' "$images" | awk '{printf "%s%s (systemd %s)", (NR > 1 ? ", " : ""), $1, $2}'))"
