package main

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/host/emit"
)

// goldenCase is one pack invocation whose output is compared with a golden
// file. The runtime directory and other temporary paths are replaced by
// placeholders so the files are stable.
type goldenCase struct {
	name string
	args []string
	// dirName is the runtime directory's last element ("run" by default).
	dirName string
}

func goldenCases() []goldenCase {
	return []goldenCase{
		{name: "qemu.args", args: []string{"--hypervisor", "qemu"}},
		{name: "qemu-systemd.args", args: []string{"--hypervisor", "qemu", "--mode", "systemd"}},
		{name: "qemu-inline.args", args: []string{"--hypervisor", "qemu", "--inline"}},
		{name: "qemu-microvm.args", args: []string{"--hypervisor", "qemu-microvm"}, dirName: "run,dir"},
		// No manifest and no secret on the command line: only static strings.
		{name: "cloud-hypervisor.args", args: []string{"--hypervisor", "cloud-hypervisor"}},
		{name: "cloud-hypervisor-api.args", args: []string{"--hypervisor", "cloud-hypervisor", "--ch-api", "@TMP@/api.sock"}},
		{name: "qemu-overflow.args", args: []string{"--hypervisor", "qemu", "--overflow", "channel", "--notify-socket", "vsock-stream:2:9999", "--smbios-reserve", "64780"}},
		{name: "json-qemu.json", args: []string{"--hypervisor", "json"}},
		{name: "json-qemu-microvm.json", args: []string{"--hypervisor", "json", "--target", "qemu-microvm", "--mode", "systemd"}, dirName: "run,dir"},
		{name: "json-cloud-hypervisor.json", args: []string{"--hypervisor", "json", "--target", "cloud-hypervisor"}},
		{name: "json-cloud-hypervisor-api.json", args: []string{"--hypervisor", "json", "--target", "cloud-hypervisor", "--ch-api", "@TMP@/api.sock"}},
		{name: "json-firecracker.json", args: []string{"--hypervisor", "json", "--target", "firecracker"}},
		// Firecracker: nothing for the hypervisor; the session brings it all.
		{name: "firecracker.args", args: []string{"--hypervisor", "firecracker"}},
	}
}

// goldenSources writes the fixed credentials and signing key and returns
// the source and key flags.
func goldenSources(t *testing.T, dir string) []string {
	t.Helper()
	secrets := filepath.Join(dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	key, _ := goldenKey(t, secrets)
	return []string{
		"--vm", "test-vm",
		"--cred", "api-key=file:" + secretFile(t, secrets, "api-key", []byte("api-key-value-0123456789abcdef")),
		"--cred", "db-password=file:" + secretFile(t, secrets, "db-password", []byte("correct horse battery staple")),
		"--static", "ENVIRONMENT=test",
		"--sign-key", key,
	}
}

func TestGoldenPack(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			dirName := tc.dirName
			if dirName == "" {
				dirName = "run"
			}
			rt := filepath.Join(tmp, dirName)
			args := append([]string{"pack"}, goldenSources(t, tmp)...)
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "@TMP@", tmp))
			}
			args = append(args, "--runtime-dir", rt)
			h := newHarness(t)
			if code := h.run(args...); code != 0 {
				t.Fatalf("exit %d: %s", code, h.log.String())
			}
			out := h.stdout.String()
			out = strings.ReplaceAll(out, emit.EscapeComma(tmp), "@TMP@")
			out = strings.ReplaceAll(out, tmp, "@TMP@")
			golden(t, tc.name, []byte(out))
		})
	}
}

func TestGoldenDMI(t *testing.T) {
	tmp := t.TempDir()
	out := filepath.Join(tmp, "test-vm.dmi")
	h := newHarness(t)
	args := append([]string{"pack"}, goldenSources(t, tmp)...)
	args = append(args, "--hypervisor", "dmi", "--out", out)
	if code := h.run(args...); code != 0 {
		t.Fatalf("exit %d: %s", code, h.log.String())
	}
	if h.stdout.String() != "" {
		t.Errorf("dmi printed %q", h.stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "dmi.hex", []byte(hex.Dump(b)))
}

func TestPrint0(t *testing.T) {
	tmp := t.TempDir()
	h := newHarness(t)
	args := append([]string{"pack"}, goldenSources(t, tmp)...)
	rt := filepath.Join(tmp, "run\nline")
	if code := h.run(append(args, "--hypervisor", "qemu", "--runtime-dir", rt)...); code != cli3 {
		t.Fatalf("a newline in an argument without --print0: exit %d, want 3", code)
	}
	if !strings.Contains(h.log.String(), "--print0") {
		t.Errorf("log %q does not suggest --print0", h.log.String())
	}
	if _, err := os.Stat(rt); !os.IsNotExist(err) {
		t.Errorf("runtime dir left behind: %v", err)
	}
	h = newHarness(t)
	if code := h.run(append(args, "--hypervisor", "qemu", "--runtime-dir", rt, "--print0")...); code != 0 {
		t.Fatalf("exit %d: %s", code, h.log.String())
	}
	got := strings.Split(strings.TrimSuffix(h.stdout.String(), "\x00"), "\x00")
	if len(got) != 8 || got[0] != "-smbios" || got[1] != "type=11,path="+rt+"/oem-000" {
		t.Errorf("print0 output %q", got)
	}
}

const cli3 = 3
