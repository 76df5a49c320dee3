//go:build vmtest

package vm

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifyPort is where the notify case's vmm.notify_socket points: CID 1,
// the guest itself over vsock_loopback, where notifysink listens.
const notifyPort = 5001

// notifyScript is the notify case's verdict: once the boot is done (PID 1
// sends READY=1 then), what notifysink recorded, or "none": it waits up to
// 20 s of guest uptime for READY=1 (by the clock, not a count of sleeps:
// under TCG on a busy host each fork can take a second).
const notifyScript = `#!/bin/sh
. /etc/vmcred-test/lib.sh
systemctl is-system-running --wait >/dev/null 2>&1
echo "VMCRED-STEP vmm.notify_socket in @system: $(cat /run/credentials/@system/vmm.notify_socket 2>&1)"
uptime() { read -r up _ </proc/uptime; echo "${up%.*}"; }
end=$(($(uptime) + 20))
while ! grep -q READY=1 /run/notifysink.out 2>/dev/null && [ "$(uptime)" -lt "$end" ]; do sleep 1; done
if [ -s /run/notifysink.out ]; then
	sed 's/^/VMCRED-NOTIFY /' /run/notifysink.out
else
	echo "VMCRED-NOTIFY none"
fi
echo "VMCRED-STEP notifysink.service is $(systemctl is-active notifysink.service)"
echo "VMCRED-CASE PASS"
`

// notifySinkUnit runs notifysink from early boot, before anything could
// finish the boot.
const notifySinkUnit = `[Unit]
Description=vmcred test: stand-in for the host's vmm.notify_socket receiver
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=exec
ExecStart=/usr/local/bin/notifysink --port 5001 --out /run/notifysink.out
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=sysinit.target
`

// runNotify boots img with io.systemd.credential:vmm.notify_socket=
// vsock-stream:1:PORT and asserts this systemd's own behaviour: 256 and
// later send READY=1 there at the end of the boot and half-close (the
// receiver reads to EOF before it closes), 252 has no vmm.notify_socket
// (253 added it, 256 its vsock-stream form: systemd-creds.md and
// hypervisors.md) and sends nothing.
func (s *suite) runNotify(t *testing.T, img sysImage) {
	name := fmt.Sprintf("notify-socket-systemd%d", img.major)
	sink := filepath.Join(t.TempDir(), "notifysink")
	if err := goBuild(sink, "./integration/cmd/notifysink", "amd64"); err != nil {
		t.Fatal(err)
	}
	a := s.initramfs(false)
	a.file("case/case.env", 0o444, caseEnv(map[string]string{
		"CASE": name, "MODE": "switchroot", "MODULES": "virtio_pci virtio_blk qemu_fw_cfg vsock_loopback",
	}))
	if err := a.copyFile("case/root/usr/local/bin/notifysink", 0o755, sink); err != nil {
		t.Fatal(err)
	}
	enable(a, "notifysink.service", []byte(notifySinkUnit))
	etc := "case/root/etc/vmcred-test/"
	a.file(etc+"case.env", 0o444, caseEnv(map[string]string{"MODE": "none", "DEMO": "0", "CUT": ""}))
	a.file(etc+"lib.sh", 0o644, []byte(libScript))
	a.file(etc+"notify.sh", 0o755, []byte(notifyScript))
	enable(a, "vmcred-test.service", verdictUnit("Wants", "notify.sh", nil))
	addr := fmt.Sprintf("vsock-stream:1:%d", notifyPort)
	o := s.boot(t, boot{
		name: name, machine: "q35", initrd: a, memory: 1024, timeout: 240 * time.Second, rootfs: img.path,
		args: []string{
			"-drive", "file=" + img.path + ",if=virtio,format=raw,snapshot=on",
			"-smbios", "type=11,value=io.systemd.credential:vmm.notify_socket=" + addr,
		},
		cmdline: "systemd.show_status=1 SYSTEMD_COLORS=0",
		abort:   []string{"Freezing execution"},
	})
	if !o.pass {
		t.Fatalf("%s: %s (console: %s)", name, o.reason, o.log)
	}
	// Each message and, on the next line, the half-close that ended it.
	var msgs []string
	ready := false
	for i, l := range o.console {
		if _, m, ok := strings.Cut(l, "VMCRED-NOTIFY message "); ok {
			msgs = append(msgs, m)
			closed := i+1 < len(o.console) && strings.Contains(o.console[i+1], "VMCRED-NOTIFY eof ")
			ready = ready || strings.Contains(m, "READY=1") && closed
		}
	}
	msg := strings.Join(msgs, " / ")
	switch {
	case img.major >= 256:
		if !ready {
			t.Errorf("systemd %d: notifysink got %q, want READY=1 then the half-close (console: %s)", img.major, msg, o.log)
		}
		t.Logf("systemd %d: PID 1 sent %d messages to %s, each half-closed: %s", img.major, len(msgs), addr, msg)
	case img.major < 253:
		if !o.has("VMCRED-NOTIFY none") {
			t.Errorf("systemd %d has no vmm.notify_socket, yet notifysink got %q (console: %s)", img.major, msg, o.log)
		}
		t.Logf("systemd %d: nothing sent to %s (no vmm.notify_socket before 253)", img.major, addr)
	default:
		t.Logf("systemd %d: notifysink got %q (253-255 send by datagram or seqpacket only; not asserted)", img.major, msg)
	}
}
