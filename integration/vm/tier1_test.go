//go:build vmtest

package vm

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/integration/testenv"
)

// tier1Case is one boot of the busybox initramfs: the host packs creds,
// QEMU boots with exactly pack's arguments, init.sh runs the agent and
// checks the credstore.
type tier1Case struct {
	name       string
	hypervisor string // pack --hypervisor: qemu (QEMU's q35 machine) or qemu-microvm
	creds      []cred
	packFlags  []string // pack flags besides the sources, --vm and --sign-key
	// fillers is how many plain (non-credential) OEM strings QEMU gets
	// before pack's: QEMU puts every -smbios type=11 into one structure,
	// whose 1-byte string count wraps past 255.
	fillers int
	// tamper names a credential whose payload file is altered after pack
	// and before the boot.
	tamper   string
	modules  []string // kernel modules init.sh loads first, besides qemu_fw_cfg
	noSMBIOS bool     // the guest also proves SMBIOS type 11 is absent
	needs    []string // commands the case needs
	wantRC   int      // vmcred-guest load's exit code
	// wantFail, for the harness's own check, is a substring of the FAIL
	// verdict the guest must print: the case gives the guest a wrong
	// digest for badDigest.
	wantFail, badDigest string
	// arch is the guest's architecture ("" is x86_64); efi boots an
	// aarch64 guest through edk2, which installs SMBIOS tables.
	arch string
	efi  bool
}

// arm64Cases are x86_64 cases run again on an aarch64 guest (QEMU virt,
// TCG), derived by name so that they follow the x86_64 ones as those
// change: with edk2 (UEFI), SMBIOS type 11 carries the credentials as on
// q35; with direct kernel boot, as microvm.nix boots aarch64 guests, there
// is no SMBIOS at all and fw_cfg carries them. The vsock session (the
// readiness path) runs on aarch64 in TestTier1Session.
func arm64Cases(x86 []tier1Case) []tier1Case {
	variants := map[string]struct {
		name string
		efi  bool
	}{
		"seed-q35":      {"aarch64-uefi-smbios", true},
		"big-10k-q35":   {"aarch64-uefi-smbios-10k", true},
		"microvm-fwcfg": {"aarch64-virt-fwcfg", false},
	}
	var out []tier1Case
	for _, tc := range x86 {
		v, ok := variants[tc.name]
		if !ok {
			continue
		}
		tc.name, tc.arch, tc.efi = v.name, archArm64, v.efi
		out = append(out, tc)
	}
	if len(out) != len(variants) {
		panic(fmt.Sprintf("arm64Cases: %d of %d x86_64 cases found; a case was renamed", len(out), len(variants)))
	}
	return out
}

// tier1Cases are the initramfs boots. Each takes about 4 s of TCG time.
func tier1Cases() []tier1Case {
	big10k, big50k := randomCred("BIG_10K", 10*1024), randomCred("BIG_50K", 50*1024)
	return []tier1Case{{
		// The seed's test-vm: three secrets, two static settings, a signed
		// manifest, SMBIOS on q35.
		name: "seed-q35", hypervisor: "qemu", creds: seedCreds(),
	}, {
		// Over systemd 252's 4 KiB window, which the agent does not have
		// (it reads the whole DMI table).
		name: "big-10k-q35", hypervisor: "qemu", creds: append(seedCreds(), big10k),
	}, {
		// 300 strings in one type-11 structure: the count byte says 44. The
		// credentials come last, so a parser that trusts the count misses
		// them all.
		name: "strings-300-q35", hypervisor: "qemu", creds: seedCreds(), fillers: 300 - 6,
	}, {
		// One payload file altered after pack: the digest no longer
		// matches the signed manifest. Nothing may reach the credstore.
		name: "tampered-q35", hypervisor: "qemu", creds: seedCreds(), tamper: "DB_PASSWORD", wantRC: 1,
	}, {
		// QEMU's microvm machine has no SMBIOS: pack uses fw_cfg, which
		// also carries 50 KB (over the 64 KiB SMBIOS table once in base64;
		// see TestPackRefusesOversizedSMBIOS).
		name: "microvm-fwcfg", hypervisor: "qemu-microvm", creds: append(seedCreds(), big50k),
		noSMBIOS: true,
	}, {
		// The harness itself: a wrong expected digest must give a FAIL
		// verdict naming the credential, or no other case proves anything.
		name: "harness-detects-mismatch", hypervisor: "qemu-microvm", creds: seedCreds(), noSMBIOS: true,
		badDigest: "JWT_SECRET", wantFail: "credential JWT_SECRET sha256",
	}}
}

func TestTier1(t *testing.T) {
	s := getSuite(t)
	s.requireCommands(t, []string{"vmcred-host pack", "vmcred-host keygen", "vmcred-guest load"})
	t.Parallel() // alongside tier 2
	tierTime(t, "tier 1")
	cases := tier1Cases()
	for _, tc := range append(cases, arm64Cases(cases)...) {
		t.Run(tc.name, func(t *testing.T) {
			s.requireCommands(t, tc.needs)
			if tc.arch == archArm64 && s.arm == nil {
				testenv.SkipOrFail(t, "%s", s.armSkip)
			}
			t.Parallel() // -parallel (default GOMAXPROCS) bounds the QEMUs at once
			s.runTier1(t, tc)
		})
	}
}

func (s *suite) runTier1(t *testing.T, tc tier1Case) {
	dir := t.TempDir()
	runtime := filepath.Join(dir, "run")
	args := append([]string{"--vm", tc.name, "--hypervisor", tc.hypervisor, "--runtime-dir", runtime, "--sign-key", s.signKey},
		tc.packFlags...)
	qemuArgs := s.pack(t, append(args, packArgs(t, dir, tc.creds)...)...)
	checkPayloadFiles(t, qemuArgs, tc.creds)
	want := append([]cred(nil), tc.creds...)
	if tc.tamper != "" {
		tamper(t, qemuArgs, tc.tamper)
		want = nil
	}
	var firmware []string
	for i := range tc.fillers {
		firmware = append(firmware, "-smbios", fmt.Sprintf("type=11,value=vmcred-test-filler-%03d", i))
	}
	firmware = append(firmware, qemuArgs...)

	a := s.initramfsFor(cmp.Or(tc.arch, archX86), false)
	a.file("case/trust.pub", 0o444, mustRead(t, s.pubKey))
	expect := expectFile(want)
	if tc.badDigest != "" {
		expect = corruptDigest(t, expect, tc.badDigest)
	}
	a.file("case/expect", 0o444, expect)
	vars := map[string]string{
		"CASE": tc.name, "MODE": "load", "MODULES": strings.Join(append([]string{"qemu_fw_cfg"}, tc.modules...), " "),
		"LOAD_ARGS": "--trust-key /case/trust.pub --vm " + tc.name,
		"WANT_RC":   fmt.Sprint(tc.wantRC),
	}
	if tc.noSMBIOS {
		vars["CHECK_NO_SMBIOS"] = "1"
	}
	if tc.fillers > 0 {
		n := tc.fillers
		for _, p := range payloadFiles(qemuArgs) {
			if p.smbios {
				n++
			}
		}
		vars["WANT_TYPE11_COUNT"] = fmt.Sprint(n % 256) // proof that the count wrapped
	}
	if s.guestCmds["status"] {
		vars["HAVE_STATUS"] = "1"
	}
	a.file("case/case.env", 0o444, caseEnv(vars))

	machine := "q35"
	switch {
	case tc.arch == archArm64:
		machine = "virt"
	case tc.hypervisor == "qemu-microvm":
		machine = "microvm"
	}
	o := s.boot(t, boot{name: tc.name, machine: machine, arch: tc.arch, efi: tc.efi, initrd: a, args: firmware})
	switch {
	case tc.wantFail != "" && (o.pass || !strings.Contains(o.reason, tc.wantFail)):
		t.Fatalf("%s: pass=%v reason %q, want a FAIL verdict containing %q (console: %s)", tc.name, o.pass, o.reason, tc.wantFail, o.log)
	case tc.wantFail == "" && !o.pass:
		t.Fatalf("%s: %s (console: %s)", tc.name, o.reason, o.log)
	}
	// edk2 installed QEMU's SMBIOS tables and the agent read type 11
	// there (vmcred-guest status's Sources line).
	if tc.efi && !o.has("smbios: 1 structure") {
		t.Errorf("%s: the agent found no SMBIOS type 11 under UEFI (console: %s)", tc.name, o.log)
	}
}

// corruptDigest changes the expected SHA-256 of credential name in an
// expect file.
func corruptDigest(t *testing.T, expect []byte, name string) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(expect), "\n")
	for i, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == name {
			lines[i] = fmt.Sprintf("%s %s %064x\n", f[0], f[1], 0)
			return []byte(strings.Join(lines, ""))
		}
	}
	t.Fatalf("no %s in the expect file", name)
	return nil
}

// checkPayloadFiles checks what pack handed QEMU: every payload file is
// mode 0400, and no secret value (raw or base64) is on the command line.
func checkPayloadFiles(t *testing.T, args []string, creds []cred) {
	t.Helper()
	for _, f := range payloadFiles(args) {
		st, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if m := st.Mode().Perm(); m != 0o400 {
			t.Errorf("payload file %s has mode %#o, want 0400", f.path, m)
		}
	}
	line := strings.Join(args, " ")
	for _, c := range creds {
		if c.static {
			continue
		}
		if strings.Contains(line, base64.StdEncoding.EncodeToString(c.value)) || strings.Contains(line, string(c.value)) {
			t.Errorf("secret %s appears on QEMU's command line", c.name)
		}
	}
}

// payload is a file QEMU reads at start: an SMBIOS OEM string
// (-smbios type=11,path=F) or a fw_cfg item (-fw_cfg name=N,file=F).
type payload struct {
	path   string
	fwcfg  string // the fw_cfg item's name; "" for SMBIOS
	smbios bool
}

func payloadFiles(args []string) []payload {
	var out []payload
	for i := 0; i+1 < len(args); i++ {
		opts := map[string]string{}
		for _, kv := range strings.Split(args[i+1], ",") {
			k, v, _ := strings.Cut(kv, "=")
			opts[k] = v
		}
		switch {
		case args[i] == "-smbios" && opts["type"] == "11" && opts["path"] != "":
			out = append(out, payload{path: opts["path"], smbios: true})
		case args[i] == "-fw_cfg" && opts["file"] != "":
			out = append(out, payload{path: opts["file"], fwcfg: opts["name"]})
		}
	}
	return out
}

// tamper alters the payload of credential name in place: for an OEM string
// one base64 character (still valid base64, so only the digest can tell),
// for fw_cfg one bit. The file keeps its mode 0400 (root writes anyway).
func tamper(t *testing.T, args []string, name string) {
	t.Helper()
	for _, p := range payloadFiles(args) {
		b, err := os.ReadFile(p.path)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case p.smbios:
			_, rest, ok := bytes.Cut(b, []byte(":"))
			if !ok || !bytes.HasPrefix(rest, []byte(name+"=")) {
				continue
			}
			i := len(b) - len(rest) + len(name) + 1
			if b[i] == 'A' {
				b[i] = 'B'
			} else {
				b[i] = 'A'
			}
		case strings.HasSuffix(p.fwcfg, "/"+name):
			b[0] ^= 1
		default:
			continue
		}
		if err := os.WriteFile(p.path, b, 0o400); err != nil { // O_TRUNC keeps the mode
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("no payload file for credential %s in %q", name, args)
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPackRefusesOversizedSMBIOS: 50 KB is 68 KB of OEM string in base64,
// over the 65535-byte SMBIOS table QEMU can build (it refuses to start, or
// with the 64-bit entry point corrupts the table silently: vm-testing.md).
// pack must refuse before launch and name the credential, which is why the
// 50 KB cases go by fw_cfg and the host's session.
func TestPackRefusesOversizedSMBIOS(t *testing.T) {
	s := getSuite(t)
	s.requireCommands(t, []string{"vmcred-host pack"})
	dir := t.TempDir()
	args := append([]string{"pack", "--print0", "--vm", "big", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(dir, "run")},
		packArgs(t, dir, []cred{randomCred("BIG_50K", 50*1024)})...)
	cmd := exec.Command(s.host, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("pack: err %v, want exit 1 (policy); stdout %q stderr %s", err, stdout.String(), stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("pack printed arguments although it failed: %q", stdout.String())
	}
	for _, want := range []string{"BIG_50K", "65535"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("pack's error does not name %q: %s", want, stderr.String())
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "run")); len(ents) > 0 {
		t.Errorf("pack left %d payload files behind after failing", len(ents))
	}
}
