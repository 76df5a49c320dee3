#!/bin/busybox sh
# /init of the vmcred test initramfs (busybox sh, PID 1 in a QEMU/TCG guest).
# The Go harness (vm_test.go) packs this file with busybox, the kernel
# modules, the static vmcred binaries and a /case folder:
#   /case/case.env   shell variables: CASE, MODULES, MODE, LOAD_ARGS, WANT_RC, ...
#   /case/expect     "NAME SIZE SHA256" per credential the credstore must hold
#   /case/root/      (MODE=switchroot) files copied onto the disk's root
# It prints VMCRED-STEP lines for people and one verdict the harness reads:
#   VMCRED-CASE PASS  |  VMCRED-CASE FAIL <reason>
# then powers off. If it dies instead, panic=-1 and -no-reboot end QEMU.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /newroot
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The agent refuses a credstore that is not on tmpfs or ramfs.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
export PATH=/bin:/sbin

step() { echo "VMCRED-STEP $*"; }
finish() {
	sync
	poweroff -f
	sleep 10
}
fail() {
	echo "VMCRED-CASE FAIL $*"
	finish
}
pass() {
	echo "VMCRED-CASE PASS"
	finish
}

# load_module NAME: insmod NAME's dependencies, then NAME, from the deps file
# setup.sh wrote ("name dep,dep"). A name absent from it is built in.
LOADED=" "
load_module() {
	local m=$1 deps d
	case "$LOADED" in *" $m "*) return 0 ;; esac
	grep -q "^$m " /lib/vmcred-modules/deps || return 0
	deps=$(sed -n "s/^$m //p" /lib/vmcred-modules/deps)
	for d in $(echo "$deps" | tr , ' '); do load_module "$d" || return 1; done
	insmod "/lib/vmcred-modules/$m.ko" || return 1
	LOADED="$LOADED$m "
}

# check_credstore: the credstore holds exactly /case/expect, 0400 files in a
# 0700 folder, each with the expected size and SHA-256.
check_credstore() {
	local dir=/run/credstore want got n size sum mode
	want=$(grep -c . /case/expect)
	got=0
	[ -d "$dir" ] && got=$(ls -A "$dir" | grep -c .)
	step "credstore: $got file(s), want $want"
	[ "$got" = "$want" ] || { ls -la "$dir" 2>&1; fail "credstore has $got files, want $want"; }
	[ "$want" = 0 ] && return 0
	mode=$(stat -c %a "$dir")
	[ "$mode" = 700 ] || fail "credstore folder mode $mode, want 700"
	while read -r n size sum; do
		[ -f "$dir/$n" ] || fail "credential $n missing from the credstore"
		mode=$(stat -c %a "$dir/$n")
		got=$(stat -c %s "$dir/$n")
		[ "$mode" = 400 ] || fail "credential $n mode $mode, want 400"
		[ "$got" = "$size" ] || fail "credential $n has $got bytes, want $size"
		got=$(sha256sum "$dir/$n" | cut -d' ' -f1)
		[ "$got" = "$sum" ] || fail "credential $n sha256 $got, want $sum"
	done </case/expect
	step "credstore matches /case/expect"
}

# check_no_smbios: prove the firmware has no SMBIOS OEM strings (microvm).
check_no_smbios() {
	if [ -e /sys/firmware/dmi/tables/DMI ]; then
		ls -d /sys/firmware/dmi/entries/11-* >/dev/null 2>&1 && fail "SMBIOS type 11 present"
		step "SMBIOS: a DMI table but no type 11"
	else
		step "SMBIOS: no /sys/firmware/dmi/tables/DMI"
	fi
}

[ -f /case/case.env ] || fail "no /case/case.env in the initramfs"
. /case/case.env
step "case $CASE: kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s"
for m in $MODULES; do load_module "$m" || fail "insmod $m"; done
[ -n "$MODULES" ] && step "modules loaded:$LOADED"

case "$MODE" in
switchroot)
	# Tier 2: mount the image (snapshot=on: changes vanish with QEMU), add
	# this boot's files, and hand over to systemd. ext4 is built in.
	i=0
	while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	mount -t ext4 -o rw /dev/vda /newroot || fail "mount /dev/vda"
	cp -a /case/root/. /newroot/ || fail "copy /case/root onto /dev/vda"
	umount /run /proc /sys
	umount /dev
	step "switch_root to systemd"
	exec switch_root /newroot /sbin/init
	;;
load)
	[ "${CHECK_NO_SMBIOS:-0}" = 1 ] && check_no_smbios
	if [ -n "${WANT_TYPE11_COUNT:-}" ]; then
		# The count byte of the (first) type-11 structure, at offset 4.
		count=$(od -An -tu1 -j4 -N1 /sys/firmware/dmi/entries/11-0/raw | tr -d ' ')
		step "SMBIOS type 11 count byte: $count"
		[ "$count" = "$WANT_TYPE11_COUNT" ] || fail "type-11 count byte $count, want $WANT_TYPE11_COUNT"
	fi
	# What the firmware carries, for the log (list reads it, never verifies).
	fw=""
	[ -r /sys/firmware/dmi/tables/DMI ] && fw="--dmi-table /sys/firmware/dmi/tables/DMI"
	[ -d /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials ] &&
		fw="$fw --fw-cfg /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
	[ -n "$fw" ] && vmcred-guest list $fw
	step "vmcred-guest load $LOAD_ARGS"
	# No NOTIFY_SOCKET here (no systemd): the agent's sd_notify is a no-op.
	unset NOTIFY_SOCKET
	vmcred-guest load --credstore /run/credstore --status-dir /run/vmcred $LOAD_ARGS
	rc=$?
	step "load exit $rc (want ${WANT_RC:-0}), uptime $(cut -d' ' -f1 /proc/uptime) s"
	[ "$rc" = "${WANT_RC:-0}" ] || fail "vmcred-guest load exit $rc, want ${WANT_RC:-0}"
	# The report (no values) must agree with the exit code.
	outcome=ready
	[ "$rc" = 0 ] || outcome=failed
	[ -f /run/vmcred/status.json ] || fail "no /run/vmcred/status.json"
	step "status:$(grep -m1 '"summary"' /run/vmcred/status.json)"
	grep -q "\"outcome\": *\"$outcome\"" /run/vmcred/status.json || fail "status.json outcome is not $outcome"
	if [ "${HAVE_STATUS:-0}" = 1 ]; then
		# The debug view of that report: its exit code is the outcome.
		vmcred-guest status --status-dir /run/vmcred
		src=$?
		want=0
		[ "$outcome" = ready ] || want=1
		[ "$src" = "$want" ] || fail "vmcred-guest status exit $src, want $want (outcome $outcome)"
		vmcred-guest list --status-dir /run/vmcred --credstore /run/credstore
	fi
	check_credstore
	pass
	;;
session)
	# DESIGN §8 in a real kernel: the agent on its privileged vsock port;
	# the "host" (vmcred-host push) dials it over vsock loopback (CID 1),
	# since the machine running the tests must never open AF_VSOCK.
	unset NOTIFY_SOCKET
	fw=""
	[ -r /sys/firmware/dmi/tables/DMI ] && fw="--dmi-table /sys/firmware/dmi/tables/DMI"
	mkdir -p /run/vmcred-host
	vmcred-guest agent --listen "vsock::$AGENT_PORT" --peer-cid 1 --vm "$CASE" --trust-key /case/trust.pub \
		--credstore /run/credstore --status-dir /run/vmcred --system-credentials "" $fw &
	agent=$!
	step "vmcred-guest agent on vsock port $AGENT_PORT (pid $agent)"
	# push retries while the agent comes up (vsock answers RST until then).
	vmcred-host push --vm "$CASE" --connect "vsock:1:$AGENT_PORT" --sign-key /case/sign.key \
		--status-dir /run/vmcred-host --timeout 30s $PUSH_SOURCES
	rc=$?
	[ "$rc" = 0 ] || fail "vmcred-host push exit $rc, want 0"
	step "vmcred-host push: exit 0"
	vmcred-host wait --vm "$CASE" --status-dir /run/vmcred-host --timeout 5s || fail "vmcred-host wait did not see ready"
	grep -q '"acknowledged": *true' /run/vmcred/status.json || fail "status.json: the host did not acknowledge the report"
	check_credstore
	# The fact the design rests on, on this kernel: an unprivileged process
	# cannot bind the agent's port or any other port up to 1023; it can
	# bind 1024; and a second root binder gets EADDRINUSE.
	for probe in "$AGENT_PORT 65534 EACCES" "1023 65534 EACCES" "1024 65534 ok" "$AGENT_PORT 0 EADDRINUSE"; do
		set -- $probe
		r=$(vsockprobe bind "$1" "$2")
		step "$r"
		case "$r" in *": $3") ;; *) fail "bind port $1 as uid $2: '$r', want $3" ;; esac
	done
	# Sessions the agent must refuse, with nothing written: another key,
	# another VM, and the manifest of the session above replayed.
	vmcred-host push --vm "$CASE" --connect "vsock:1:$AGENT_PORT" --sign-key /case/other.key \
		--status-dir /run/vmcred-host-x --timeout 10s $PUSH_SOURCES_NEW
	rc=$?
	[ "$rc" = 1 ] || fail "push signed by another key: exit $rc, want 1"
	step "push signed by another key: refused"
	vmcred-host push --vm "other-$CASE" --connect "vsock:1:$AGENT_PORT" --sign-key /case/sign.key \
		--status-dir /run/vmcred-host-x --timeout 10s $PUSH_SOURCES_NEW
	rc=$?
	[ "$rc" = 1 ] || fail "push for another VM: exit $rc, want 1"
	step "push for another VM: refused"
	r=$(vsockprobe replay 1 "$AGENT_PORT" /run/vmcred/manifest)
	step "$r"
	case "$r" in *"outcome failed"*"not signed for this session"*) ;; *) fail "replayed manifest: '$r'" ;; esac
	check_credstore
	kill "$agent"
	pass
	;;
*) fail "unknown MODE '$MODE'" ;;
esac
