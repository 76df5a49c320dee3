//go:build vmtest

package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Repository files the systemd guest uses as they are shipped.
const (
	agentUnit    = "guest/systemd/vmcred-guest.service"
	demoUnit     = "guest/systemd/examples/demo-oem-credentials.service"
	demoDropIn   = "guest/systemd/examples/demo-oem-credentials.service.d/vmcred.conf"
	systemdUnits = "etc/systemd/system"
)

// checkScript runs as the test consumer: it compares what LoadCredential=
// handed it ($CREDENTIALS_DIRECTORY) with /etc/vmcred-test/expect, and
// prints the verdict. Its exit status powers the VM off either way.
const checkScript = `#!/bin/sh
# vmcred tier-2 check (integration/vm/tier2_test.go).
fail() { echo "VMCRED-CASE FAIL $*"; exit 1; }
d=$CREDENTIALS_DIRECTORY
[ -d "$d" ] || fail "no CREDENTIALS_DIRECTORY"
while read -r name size sum; do
	f=$d/$name
	[ -f "$f" ] || fail "LoadCredential=$name: not handed to the service"
	got=$(stat -c %s "$f")
	gotsum=$(sha256sum <"$f" | cut -d' ' -f1)
	echo "VMCRED-CRED $name size=$got sha256=$gotsum"
	[ "$got" = "$size" ] || fail "$name: $got bytes, want $size"
	[ "$gotsum" = "$sum" ] || fail "$name: sha256 differs from the host's"
	# Verified mode: vmcred's own OEM prefix, which systemd does not import.
	[ -e "/run/credentials/@system/$name" ] && fail "$name is in /run/credentials/@system: systemd imported it unverified"
done </etc/vmcred-test/expect
echo "VMCRED-STEP /run/credentials/@system: $(ls /run/credentials/@system 2>/dev/null | tr '\n' ' ')"
echo "VMCRED-STEP vmcred-guest.service is $(systemctl is-active vmcred-guest.service), uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "VMCRED-CASE PASS"
`

// consumerUnit is the test consumer: like the seed's demo unit it asks for
// the credentials by name, Requires= the agent as the shipped drop-in does,
// and ends the VM ([Unit] SuccessAction=, FailureAction=: in [Service]
// systemd ignores them and the VM never powers off).
func consumerUnit(names []string) []byte {
	var b strings.Builder
	b.WriteString(`[Unit]
Description=vmcred test: what LoadCredential= hands a service
Requires=vmcred-guest.service
After=vmcred-guest.service demo-oem-credentials.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh /etc/vmcred-test/check.sh
`)
	for _, n := range names {
		fmt.Fprintf(&b, "LoadCredential=%s\n", n)
	}
	b.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
	return []byte(b.String())
}

// wantedBy reads the WantedBy= targets of a unit file's [Install] section,
// to enable it the way systemctl enable would.
func wantedBy(unit []byte) []string {
	var out []string
	install := false
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "[") {
			install = l == "[Install]"
		}
		if v, ok := strings.CutPrefix(l, "WantedBy="); ok && install {
			out = append(out, strings.Fields(v)...)
		}
	}
	return out
}

// enable adds unit (with contents) to the overlay and links it from the
// targets its [Install] section names.
func enable(a archive, name string, unit []byte) {
	a.file("case/root/"+systemdUnits+"/"+name, 0o644, unit)
	for _, target := range wantedBy(unit) {
		a.symlink("case/root/"+systemdUnits+"/"+target+".wants/"+name, "../"+name)
	}
}

// TestTier2SystemdVerified10K boots Debian's systemd 252 with the shipped
// vmcred-guest.service: in verified mode a 10 KB credential reaches a
// LoadCredential= consumer intact, where systemd's own import would have
// cut it at 4 KiB (vm-testing.md, step 4).
func TestTier2SystemdVerified10K(t *testing.T) {
	s := getSuite(t)
	if os.Getenv("VMCRED_VM_TIER") == "1" {
		t.Skip("VMCRED_VM_TIER=1: tier 2 not requested")
	}
	if s.env.Rootfs == "" {
		skipOrFail(t, "no tier-2 image: run integration/vm/setup.sh (without --tier1; debootstrap takes about 4 min)")
	}
	s.requireCommands(t, []string{"vmcred-host pack", "vmcred-host keygen", "vmcred-guest load"})
	unit, err := os.ReadFile(filepath.Join(repoRoot, agentUnit))
	if err != nil {
		t.Skipf("waiting for %s: %v", agentUnit, err)
	}

	t.Parallel() // alongside tier 1
	const name = "systemd-verified-10k"
	dir := t.TempDir()
	creds := append(seedCreds(), randomCred("BIG_10K", 10*1024))
	args := []string{"--vm", name, "--hypervisor", "qemu", "--mode", "verified", "--sign-key", s.signKey,
		"--runtime-dir", filepath.Join(dir, "run")}
	qemuArgs := s.pack(t, append(args, packArgs(t, dir, creds)...)...)
	checkPayloadFiles(t, qemuArgs, creds)

	a := s.initramfs(false)
	a.file("case/case.env", 0o444, caseEnv(map[string]string{
		"CASE": name, "MODE": "switchroot", "MODULES": "virtio_pci virtio_blk qemu_fw_cfg",
	}))
	root := "case/root/"
	a.file(root+"usr/bin/vmcred-guest", 0o755, s.guestBin)
	a.file(root+"etc/vmcred/trusted.d/host.pub", 0o444, mustRead(t, s.pubKey))
	enable(a, "vmcred-guest.service", unit)
	demo := s.guestCmds["status"] // the demo unit runs `vmcred-guest status` first
	if b, err := os.ReadFile(filepath.Join(repoRoot, demoUnit)); err == nil && demo {
		enable(a, "demo-oem-credentials.service", b)
		a.file(root+systemdUnits+"/demo-oem-credentials.service.d/vmcred.conf", 0o644, mustRead(t, filepath.Join(repoRoot, demoDropIn)))
	} else {
		demo = false
		t.Logf("demo-oem-credentials.service left out: it needs %s and vmcred-guest status", demoUnit)
	}
	var names []string
	for _, c := range creds {
		names = append(names, c.name)
	}
	enable(a, "vmcred-test.service", consumerUnit(names))
	a.file(root+"etc/vmcred-test/expect", 0o444, expectFile(creds))
	a.file(root+"etc/vmcred-test/check.sh", 0o755, []byte(checkScript))

	drive := []string{"-drive", "file=" + s.env.Rootfs + ",if=virtio,format=raw,snapshot=on"}
	o := s.boot(t, boot{
		name: name, machine: "q35", initrd: a, memory: 1024, timeout: 150 * time.Second,
		args:    append(drive, qemuArgs...),
		cmdline: "systemd.show_status=1 SYSTEMD_COLORS=0",
		abort:   []string{"Failed to start vmcred-guest", "Dependency failed for vmcred", "Freezing execution"},
	})
	if !o.pass {
		t.Fatalf("%s: %s (console: %s)", name, o.reason, o.log)
	}
	if demo {
		// The seed's consumer, unchanged, printing lengths of what it got.
		for _, c := range creds[:3] {
			id := strings.ToLower(strings.ReplaceAll(c.name, "_", "-"))
			if want := fmt.Sprintf("%s = %d bytes", id, len(c.value)); !o.has(want) {
				t.Errorf("demo-oem-credentials did not print %q", want)
			}
		}
	}
}
