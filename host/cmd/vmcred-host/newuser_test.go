package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackWarnings: what pack accepts but is probably a mistake is said,
// once, as a warning; pack still succeeds.
func TestPackWarnings(t *testing.T) {
	tmp := t.TempDir()
	empty := secretFile(t, tmp, "empty", nil)
	emptyDir := filepath.Join(tmp, "emptydir")
	if err := os.Mkdir(emptyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"empty secret file", []string{"--hypervisor", "qemu", "--cred", "k=file:" + empty}, `credential "k": ` + empty + " is empty (0 bytes)"},
		{"no credentials in the sources", []string{"--hypervisor", "qemu", "--cred-dir", emptyDir}, "the sources hold no credentials"},
		{"--ch-api without --ch-config", []string{"--hypervisor", "cloud-hypervisor", "--ch-api", filepath.Join(tmp, "api.sock"), "--static", "a=b"}, "--ch-api without --ch-config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			args := append([]string{"pack", "--vm", "v", "--runtime-dir", filepath.Join(t.TempDir(), "run")}, tt.args...)
			if code := h.run(args...); code != 0 {
				t.Fatalf("exit %d: %s", code, h.log.String())
			}
			if n := strings.Count(h.log.String(), tt.want); n != 1 {
				t.Errorf("log says %q %d times, want once:\n%s", tt.want, n, h.log.String())
			}
		})
	}
}

// TestKeygenMakesTheFolder: keygen --out keys/host makes keys/, private.
func TestKeygenMakesTheFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys", "sub")
	h := newHarness(t)
	if code := h.run("keygen", "--out", filepath.Join(dir, "host")); code != 0 {
		t.Fatalf("exit %d: %s", code, h.log.String())
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("%s is mode %04o, want 0700", dir, fi.Mode().Perm())
	}
	for _, f := range []string{"host.key", "host.pub"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if strings.Contains(h.log.String(), "keygen: keygen") {
		t.Errorf("doubled prefix: %s", h.log.String())
	}
}
