package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

func TestKeygenAndSignedManifest(t *testing.T) {
	tmp := t.TempDir()
	prefix := filepath.Join(tmp, "host")
	h := newHarness(t)
	if code := h.run("keygen", "--out", prefix); code != 0 {
		t.Fatalf("keygen exit %d: %s", code, h.log.String())
	}
	for file, mode := range map[string]os.FileMode{prefix + ".key": 0o400, prefix + ".pub": 0o444} {
		fi, err := os.Lstat(file)
		if err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v (%v)", file, fi.Mode(), mode, err)
		}
	}
	if !strings.HasPrefix(h.stdout.String(), "ed25519 key ") {
		t.Errorf("stdout %q", h.stdout.String())
	}
	if strings.Contains(h.stdout.String()+h.log.String(), readTrim(t, prefix+".key")[len(manifest.PrivateKeyHeader)+1:]) {
		t.Errorf("keygen printed the private key")
	}

	// Refuses to overwrite either file.
	h = newHarness(t)
	if code := h.run("keygen", "--out", prefix); code != 1 || !strings.Contains(h.log.String(), "already exists") {
		t.Errorf("second keygen: exit %d, log %q", code, h.log.String())
	}

	// pack --sign-key signs the manifest; the guest's Open verifies it.
	pub, err := manifest.ParsePublicKey([]byte(readTrim(t, prefix+".pub") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	rt := filepath.Join(tmp, "run")
	h = newHarness(t)
	code := h.run("pack", "--vm", "test-vm", "--hypervisor", "qemu", "--sign-key", prefix+".key",
		"--cred", "api-key=file:"+secretFile(t, tmp, "api-key", []byte("v1")), "--static", "ENVIRONMENT=test",
		"--notify-socket", "vsock-stream:2:9999", "--runtime-dir", rt)
	if code != 0 {
		t.Fatalf("pack exit %d: %s", code, h.log.String())
	}
	s := readTrim(t, filepath.Join(rt, "oem-002"))
	b64, ok := strings.CutPrefix(s, oemstring.PrefixVmcred+"vmcred.manifest=")
	if !ok {
		t.Fatalf("oem-002 is %q", s)
	}
	env, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	m, v, err := manifest.Open(env, []ed25519.PublicKey{pub})
	if err != nil {
		t.Fatalf("open manifest: %v", err)
	}
	if !strings.Contains(v.String(), manifest.KeyID(pub)) {
		t.Errorf("verification %q does not name the key", v.String())
	}
	var got []string
	for _, e := range m.Entries {
		got = append(got, e.Name+" "+e.Delivery.String())
	}
	// --notify-socket adds vmm.notify_socket, listed so the agent verifies it.
	if diff := cmp.Diff([]string{"ENVIRONMENT smbios", "api-key smbios", "vmm.notify_socket smbios"}, got); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	if m.VM != "test-vm" || m.HasChallenge() {
		t.Errorf("manifest %+v", m)
	}

	// A key readable by others is refused.
	loose := filepath.Join(tmp, "loose.key")
	b, _ := os.ReadFile(prefix + ".key")
	if err := os.WriteFile(loose, b, 0o644); err != nil {
		t.Fatal(err)
	}
	h = newHarness(t)
	if code := h.run("pack", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--sign-key", loose, "--runtime-dir", rt+"2"); code != 1 || !strings.Contains(h.log.String(), "chmod 0400") {
		t.Errorf("loose key: exit %d, log %q", code, h.log.String())
	}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

func TestCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a root-only file")
	}
	tmp := t.TempDir()
	for _, d := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	secret := secretFile(t, tmp, "api-key", []byte("x"))
	open := filepath.Join(tmp, "open")
	if err := os.WriteFile(open, []byte("y"), 0o444); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"root reads all", []string{"--as-user", "root", "--cred", "api-key=file:" + secret}, 0, []string{"readable"}},
		{"nobody cannot", []string{"--as-user", "nobody", "--vm", "test-vm", "--cred", "api-key=file:" + secret, "--cred", "open=file:" + open},
			3, []string{"NOT READABLE", "LoadCredential=api-key:" + secret, "microvm@test-vm.service"}},
		{"json", []string{"--as-user", "nobody", "--json", "--cred", "open=file:" + open}, 0, []string{`"readable": true`}},
		{"no sources", []string{"--as-user", "root"}, 2, nil},
		{"no such user", []string{"--as-user", "no-such-user-vmcred", "--cred", "open=file:" + open}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(append([]string{"check"}, tt.args...)...); code != tt.code {
				t.Errorf("exit %d, want %d; log %s", code, tt.code, h.log.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(h.stdout.String(), w) {
					t.Errorf("report lacks %q:\n%s", w, h.stdout.String())
				}
			}
		})
	}
}
