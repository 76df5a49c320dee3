package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
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
		{"cloud-hypervisor", []string{"--hypervisor", "cloud-hypervisor", "--channel", "unix:/run/x.vsock_9"}},
		{"cloud-hypervisor-api", []string{"--hypervisor", "cloud-hypervisor", "--ch-api", "@TMP@/api.sock"}},
		{"json", []string{"--hypervisor", "json"}},
		{"json-out", []string{"--hypervisor", "json", "--target", "cloud-hypervisor", "--ch-api", "@TMP@/api.sock", "--out", "@TMP@/out/plan.json"}},
		{"json-microvm", []string{"--hypervisor", "json", "--target", "qemu-microvm"}},
		{"dmi", []string{"--hypervisor", "dmi", "--out", "@TMP@/out/table.dmi"}},
		{"overflow", []string{"--hypervisor", "qemu", "--overflow", "channel", "--channel", "vsock-stream:2:9", "--smbios-reserve", "65000"}},
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
			if channel && holders != 0 {
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
		{"cloud-hypervisor", []string{"--hypervisor", "cloud-hypervisor", "--channel", "unix:/run/x.vsock_9"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
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
