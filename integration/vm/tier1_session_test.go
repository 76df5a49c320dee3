//go:build vmtest

package vm

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/integration/testenv"
)

// TestTier1Session is DESIGN §8 on a real kernel (issue 14, item 6): in a
// busybox initramfs guest, vmcred-guest agent listens on its privileged
// vsock port 730; vmcred-host push, run inside the same guest, dials it
// over vsock loopback (CID 1: this machine never opens AF_VSOCK) and the
// credstore fills; wait sees ready. Then on that kernel: uid 65534 cannot
// bind the agent's port (EACCES) nor port 1023, can bind 1024, and a
// second root binder gets EADDRINUSE; and sessions signed by another key,
// for another VM, or replayed from the first session are refused with the
// credstore unchanged. The firmware carries half the credentials (q35
// SMBIOS, a firmware manifest listing the rest for the session): the agent
// waits at boot and the session completes it.
//
// It runs on x86_64 (q35) and on aarch64 (virt through edk2, which
// carries SMBIOS as q35 does).
func TestTier1Session(t *testing.T) {
	s := getSuite(t)
	s.requireCommands(t, []string{"vmcred-host pack", "vmcred-host push", "vmcred-host wait", "vmcred-guest agent"})
	t.Parallel()
	for _, arch := range []string{archX86, archArm64} {
		t.Run(arch, func(t *testing.T) {
			if arch == archArm64 && s.arm == nil {
				testenv.SkipOrFail(t, "%s", s.armSkip)
			}
			t.Parallel()
			s.runSession(t, arch)
		})
	}
}

func (s *suite) runSession(t *testing.T, arch string) {
	dir := t.TempDir()
	vm, machine, goarch := "session-q35", "q35", "amd64"
	if arch == archArm64 {
		vm, machine, goarch = "session-aarch64-uefi", "virt", "arm64"
	}
	creds := append(seedCreds(), randomCred("BIG_100K", 100*1024))
	qemuArgs := s.pack(t, append([]string{"--vm", vm, "--hypervisor", "qemu", "--runtime-dir", filepath.Join(dir, "run"), "--sign-key", s.signKey, "--overflow", "channel"},
		packArgs(t, dir, creds)...)...)
	checkPayloadFiles(t, qemuArgs, creds)

	probe := filepath.Join(dir, "vsockprobe")
	if err := goBuild(probe, "./integration/vm/vsockprobe", goarch); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	if out, err := exec.Command(s.host, "keygen", "--out", other).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}

	a := s.initramfsFor(arch, true)
	if err := a.copyFile("bin/vsockprobe", 0o755, probe); err != nil {
		t.Fatal(err)
	}
	a.file("case/trust.pub", 0o444, mustRead(t, s.pubKey))
	a.file("case/sign.key", 0o400, mustRead(t, s.signKey))
	a.file("case/other.key", 0o400, mustRead(t, other+".key"))
	a.file("case/expect", 0o444, expectFile(creds))
	var sources, fresh []string
	for _, c := range creds {
		if c.static {
			sources = append(sources, "--static", c.name+"="+string(c.value))
			fresh = append(fresh, "--static", c.name+"="+string(c.value))
			continue
		}
		a.file("case/src/"+c.name, 0o400, c.value)
		sources = append(sources, "--cred", c.name+"=file:/case/src/"+c.name)
		n := randomCred(c.name, len(c.value))
		a.file("case/new/"+c.name, 0o400, n.value)
		fresh = append(fresh, "--cred", c.name+"=file:/case/new/"+c.name)
	}
	a.file("case/case.env", 0o444, caseEnv(map[string]string{
		"CASE": vm, "MODE": "session", "AGENT_PORT": "730",
		"MODULES":          "qemu_fw_cfg vsock_loopback",
		"PUSH_SOURCES":     strings.Join(sources, " "),
		"PUSH_SOURCES_NEW": strings.Join(fresh, " "),
	}))
	o := s.boot(t, boot{name: "tier1-" + vm, machine: machine, arch: arch, efi: arch == archArm64, initrd: a, args: qemuArgs, timeout: 120e9})
	if !o.pass {
		t.Fatalf("%s: %s (console: %s)", vm, o.reason, o.log)
	}
	for _, want := range []string{"bind 730 uid 65534: EACCES", "bind 1024 uid 65534: ok", "bind 730 uid 0: EADDRINUSE", "not signed for this session"} {
		if !o.has(want) {
			t.Errorf("console lacks %q (%s)", want, o.log)
		}
	}
}
