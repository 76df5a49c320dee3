package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/shared/oemstring"
)

// canaryForms returns the forms of a secret that must never leak: the raw
// value, its base64, and base64 of each OEM string that carries it.
func canaryForms(name string, value []byte) map[string][]byte {
	forms := map[string][]byte{
		"raw":    value,
		"base64": []byte(base64.StdEncoding.EncodeToString(value)),
		"hex":    []byte(hex.EncodeToString(value)),
	}
	for _, p := range []string{oemstring.PrefixBinary, oemstring.PrefixVmcred} {
		s := p + name + "=" + base64.StdEncoding.EncodeToString(value)
		forms["base64 of "+p] = []byte(base64.StdEncoding.EncodeToString([]byte(s)))
	}
	for k, v := range digestForms(value) {
		forms[k] = v
	}
	return forms
}

// digestForms are the value's SHA-256 as hex and base64: a digest of a
// guessable secret is as good as the secret to anyone who can test
// guesses, so it may go only where the value may (issue 14).
func digestForms(value []byte) map[string][]byte {
	sum := sha256.Sum256(value)
	forms := map[string][]byte{
		"sha256 hex":    []byte(hex.EncodeToString(sum[:])),
		"sha256 base64": []byte(base64.StdEncoding.EncodeToString(sum[:])),
	}
	// The manifest's raw digest inside its base64 OEM string, at each of
	// the three alignments: the 24 bytes that are whole groups of three.
	for shift := range 3 {
		padded := append(make([]byte, shift), sum[:]...)
		enc := base64.StdEncoding.EncodeToString(padded)
		first := (shift + 2) / 3
		forms[fmt.Sprintf("sha256 in base64, alignment %d", shift)] = []byte(enc[4*first : 4*first+28])
	}
	return forms
}

// leaks says which forms occur in data.
func leaks(forms map[string][]byte, data []byte) []string {
	var out []string
	for k, f := range forms {
		if bytes.Contains(data, f) {
			out = append(out, k)
		}
	}
	return out
}

func TestCanaryPack(t *testing.T) {
	value := []byte("canary-" + rand.Text() + rand.Text())
	forms := canaryForms("api-key", value)
	cases := []struct {
		name string
		args []string
	}{
		{"qemu", []string{"--hypervisor", "qemu"}},
		{"qemu-systemd-inline", []string{"--hypervisor", "qemu", "--mode", "systemd", "--inline"}},
		{"qemu-microvm", []string{"--hypervisor", "qemu-microvm"}},
		{"cloud-hypervisor", []string{"--hypervisor", "cloud-hypervisor"}},
		{"cloud-hypervisor-api", []string{"--hypervisor", "cloud-hypervisor", "--ch-api", "@TMP@/api.sock"}},
		{"json", []string{"--hypervisor", "json"}},
		{"json-out", []string{"--hypervisor", "json", "--target", "cloud-hypervisor", "--ch-api", "@TMP@/api.sock", "--out", "@TMP@/out/plan.json"}},
		{"json-microvm", []string{"--hypervisor", "json", "--target", "qemu-microvm"}},
		{"dmi", []string{"--hypervisor", "dmi", "--out", "@TMP@/out/table.dmi"}},
		{"overflow", []string{"--hypervisor", "qemu", "--overflow", "channel", "--smbios-reserve", "65090"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			secrets := filepath.Join(tmp, "secrets")
			if err := os.Mkdir(secrets, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(tmp, "out"), 0o700); err != nil {
				t.Fatal(err)
			}
			rt := filepath.Join(tmp, "run")
			args := []string{"pack", "--vm", "canary-vm",
				"--cred", "api-key=file:" + secretFile(t, secrets, "api-key", value),
				"--cred-dir", secrets + "-dir",
				"--static", "ENVIRONMENT=test", "--runtime-dir", rt}
			if err := os.Mkdir(secrets+"-dir", 0o700); err != nil {
				t.Fatal(err)
			}
			secretFile(t, secrets+"-dir", "other", []byte("other secret"))
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "@TMP@", tmp))
			}
			h := newHarness(t)
			if code := h.run(args...); code != 0 {
				t.Fatalf("exit %d: %s", code, h.log.String())
			}
			for what, out := range map[string]string{"stdout": h.stdout.String(), "stderr": h.stderr.String(), "log": h.log.String()} {
				if l := leaks(forms, []byte(out)); len(l) > 0 {
					t.Errorf("%s leaks the secret (%v)", what, l)
				}
			}
			holders := 0
			for path, mode := range listFiles(t, rt, filepath.Join(tmp, "out")) {
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				l := leaks(forms, b)
				if len(l) == 0 {
					continue
				}
				holders++
				if mode.Perm()&0o077 != 0 {
					t.Errorf("%s holds the secret or its digest (%v) and others can read it (mode %04o)", path, l, mode.Perm())
				}
				if onlyDigest(l) {
					// The firmware manifest: a payload file only.
					continue
				}
				if mode.Perm() != 0o400 {
					t.Errorf("%s holds the secret (%v) with mode %04o", path, l, mode.Perm())
				}
				base := filepath.Base(path)
				if !strings.HasPrefix(base, "oem-") && !strings.HasPrefix(base, "fwcfg-") && base != "ch-vm-create.json" && base != "table.dmi" {
					t.Errorf("%s is not a payload file but holds the secret (%v)", path, l)
				}
			}
			channel := strings.Contains(tc.name, "firecracker") || tc.name == "cloud-hypervisor" || tc.name == "overflow"
			if strings.HasPrefix(tc.name, "json") {
				// The JSON plan describes the payload files; it writes none.
				if _, err := os.Stat(rt); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("--hypervisor json made the runtime directory %s (stat: %v)", rt, err)
				}
				return
			}
			if holders == 0 && !channel {
				t.Errorf("no payload file holds the secret: the test checks nothing")
			}
			if channel && holders != 0 && !tcDigestOnly(t, rt, forms) {
				t.Errorf("a channel credential was written to %d files", holders)
			}
		})
	}
}

func TestCanaryRun(t *testing.T) {
	value := []byte("canary-" + rand.Text() + rand.Text())
	forms := canaryForms("api-key", value)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
	}{
		{"qemu", []string{"--hypervisor", "qemu"}},
		{"qemu-microvm", []string{"--hypervisor", "qemu-microvm"}},
		// The secret goes in the session, which finds no agent here
		// (nothing listens at --connect); the hypervisor's argv and
		// environment are what this checks.
		{"cloud-hypervisor", []string{"--hypervisor", "cloud-hypervisor", "--connect", "unix:@TMP@/no-agent.sock", "--sign-key", "@KEY@", "--timeout", "300ms"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			keyFile, _ := goldenKey(t, tmp)
			for i, a := range tc.args {
				tc.args[i] = strings.ReplaceAll(strings.ReplaceAll(a, "@TMP@", tmp), "@KEY@", keyFile)
			}
			rt := filepath.Join(tmp, "run")
			args := append([]string{"run", "--vm", "canary-vm",
				"--cred", "api-key=file:" + secretFile(t, tmp, "api-key", value),
				"--static", "ENVIRONMENT=test", "--runtime-dir", rt}, tc.args...)
			args = append(args, "--", self, helperMarker, "dump", "0")
			h := newHarness(t)
			if code := h.run(args...); code != 0 {
				t.Fatalf("exit %d: %s\n%s", code, h.log.String(), h.stderr.String())
			}
			out := h.stdout.String()
			if !strings.Contains(out, "== /proc/self/cmdline") || !strings.Contains(out, "== /proc/self/environ") {
				t.Fatalf("the child did not dump its argv and environment: %q", out)
			}
			for what, s := range map[string]string{"child argv/environ (stdout)": out, "stderr": h.stderr.String(), "log": h.log.String()} {
				if l := leaks(forms, []byte(s)); len(l) > 0 {
					t.Errorf("%s leaks the secret (%v)", what, l)
				}
			}
			if tc.name == "qemu" || tc.name == "qemu-microvm" {
				// The child could read every payload file while it ran.
				if n := strings.Count(out, "payload "); n != 3 || strings.Contains(out, "err open") {
					t.Errorf("child read %d payload files: %s", n, out)
				}
			}
			if files := listFiles(t, rt); len(files) != 0 {
				t.Errorf("payload files left after the child exited: %v", files)
			}
		})
	}
}

func onlyDigest(l []string) bool {
	for _, k := range l {
		if !strings.HasPrefix(k, "sha256") {
			return false
		}
	}
	return len(l) > 0
}

// tcDigestOnly reports whether every file under rt that holds a form
// holds only digest forms (the firmware manifest), never the value.
func tcDigestOnly(t *testing.T, rt string, forms map[string][]byte) bool {
	t.Helper()
	for path := range listFiles(t, rt) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if l := leaks(forms, b); len(l) > 0 && !onlyDigest(l) {
			return false
		}
	}
	return true
}

// TestCanaryDigestNeedlesWork: the digest needles find the canary's
// SHA-256 in the firmware manifest pack writes for QEMU (a 0400 payload
// file), so their absence from cloud-hypervisor's argv and from every
// file others can read, checked above, means something.
func TestCanaryDigestNeedlesWork(t *testing.T) {
	value := []byte("canary-" + rand.Text())
	tmp := t.TempDir()
	rt := filepath.Join(tmp, "run")
	h := newHarness(t)
	if code := h.run("pack", "--vm", "canary-vm", "--hypervisor", "qemu", "--runtime-dir", rt,
		"--cred", "api-key=file:"+secretFile(t, tmp, "api-key", value)); code != 0 {
		t.Fatalf("pack: exit %d: %s", code, h.log.String())
	}
	found := false
	for path := range listFiles(t, rt) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("vmcred.manifest=")) && len(leaks(digestForms(value), b)) > 0 {
			found = true
		}
	}
	if !found {
		t.Error("no digest needle matched the manifest payload file: the digest checks prove nothing")
	}
}
