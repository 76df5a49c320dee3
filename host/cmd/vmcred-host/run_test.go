package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmcred/vmcred/shared/oemstring"
)

func TestRunExitStatus(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cmd  []string
		code int
		want string
	}{
		{"exit 0", []string{self, helperMarker, "dump", "0"}, 0, ""},
		{"exit 5", []string{self, helperMarker, "dump", "5"}, 5, "exited with status 5"},
		{"killed", []string{self, helperMarker, "kill-self"}, 128 + 9, "killed by signal 9"},
		// As a shell says it: 127 not found, 126 not executable.
		{"not found", []string{filepath.Join(t.TempDir(), "no-such-hypervisor")}, 127, "no such file"},
		{"not in PATH", []string{"vmcred-no-such-hypervisor"}, 127, "executable file not found"},
		{"not executable", []string{notExecutable(t)}, 126, "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			rt := filepath.Join(tmp, "run")
			h := newHarness(t)
			args := append([]string{"run", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--runtime-dir", rt, "--"}, tt.cmd...)
			if code := h.run(args...); code != tt.code {
				t.Errorf("exit %d, want %d; log %s", code, tt.code, h.log.String())
			}
			if !strings.Contains(h.log.String(), tt.want) {
				t.Errorf("log %q lacks %q", h.log.String(), tt.want)
			}
			if _, err := os.Stat(rt); !os.IsNotExist(err) {
				t.Errorf("runtime dir left: %v", err)
			}
		})
	}
}

func TestRunForwardsSIGTERM(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	rt := filepath.Join(tmp, "run")
	h := newHarness(t)
	done := make(chan int, 1)
	go func() {
		done <- h.run("run", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--runtime-dir", rt, "--", self, helperMarker, "wait-term")
	}()
	waitFor(t, "the child to be ready", func() bool { return strings.Contains(h.stdout.String(), "ready") })
	if files := listFiles(t, rt); len(files) != 2 {
		t.Errorf("while the child runs, %d payload files, want 2: %v", len(files), files)
	}
	h.signals <- syscall.SIGTERM
	if code := <-done; code != 7 {
		t.Errorf("exit %d, want the child's 7; log %s", code, h.log.String())
	}
	if !strings.Contains(h.stdout.String(), "got SIGTERM") {
		t.Errorf("child output %q", h.stdout.String())
	}
	if _, err := os.Stat(rt); !os.IsNotExist(err) {
		t.Errorf("runtime dir left: %v", err)
	}
}

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"--hypervisor", "qemu"}, "give the hypervisor command after --"},
		{"empty command", []string{"--hypervisor", "qemu", "--"}, "give the hypervisor command after --"},
		{"json", []string{"--hypervisor", "json", "--", "true"}, "use pack"},
		{"ch-api without --api-socket", []string{"--hypervisor", "cloud-hypervisor", "--ch-api", "/tmp/x.sock", "--", "cloud-hypervisor"}, "add --api-socket path=/tmp/x.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			args := append([]string{"run", "--vm", "v", "--static", "a=b"}, tt.args...)
			if code := h.run(args...); code != 2 || !strings.Contains(h.log.String(), tt.want) {
				t.Errorf("exit %d, log %q; want 2 and %q", code, h.log.String(), tt.want)
			}
		})
	}
}

func TestHasAPISocket(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"--api-socket", "path=/s"}, true},
		{[]string{"--api-socket=path=/s"}, true},
		{[]string{"--api-socket", "/s"}, true},
		{[]string{"--api-socket", "path=/s2"}, false},
		{[]string{"path=/s"}, false},
	} {
		if got := hasAPISocket(tc.args, "/s"); got != tc.want {
			t.Errorf("hasAPISocket(%q) = %v", tc.args, got)
		}
	}
}

// TestRunCloudHypervisorAPI plays cloud-hypervisor with a helper that
// listens on --api-socket late and records the requests: run must wait for
// the socket, send vm.create with every OEM string, then vm.boot; the
// secret appears only in that request (and its 0400 body file, removed
// after boot), never in the child's argv or environment or any output.
func TestRunCloudHypervisorAPI(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	value := []byte("canary-" + rand.Text() + rand.Text())
	forms := canaryForms("api-key", value)
	tmp := t.TempDir()
	rt := filepath.Join(tmp, "run")
	sock := filepath.Join(tmp, "api.sock")
	cfg := filepath.Join(tmp, "vm.json")
	if err := os.WriteFile(cfg, []byte(`{"payload":{"kernel":"/k"},"platform":{"serial_number":"s1"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
	code := h.run("run", "--vm", "v", "--hypervisor", "cloud-hypervisor", "--ch-api", sock, "--ch-config", cfg,
		"--cred", "api-key=file:"+secretFile(t, tmp, "api-key", value), "--static", "ENVIRONMENT=test", "--runtime-dir", rt,
		"--", self, helperMarker, "fake-ch", "--api-socket", "path="+sock)
	if code != 0 {
		t.Fatalf("exit %d; log %s; stderr %s", code, h.log.String(), h.stderr.String())
	}
	rec, err := os.ReadFile(sock + ".requests")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(rec), "\n")
	if len(lines) < 4 || lines[0] != "PUT /api/v1/vm.create application/json" || lines[2] != "PUT /api/v1/vm.boot " {
		t.Fatalf("requests:\n%s", rec)
	}
	var body struct {
		Payload  map[string]string `json:"payload"`
		Platform struct {
			Serial     string   `json:"serial_number"`
			OEMStrings []string `json:"oem_strings"`
		} `json:"platform"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &body); err != nil {
		t.Fatalf("vm.create body: %v", err)
	}
	if body.Payload["kernel"] != "/k" || body.Platform.Serial != "s1" || len(body.Platform.OEMStrings) != 3 {
		t.Errorf("vm.create body lost the config: %+v", body)
	}
	if !strings.Contains(lines[1], oemstring.PrefixVmcred+"api-key=") || len(leaks(forms, []byte(lines[1]))) == 0 {
		t.Errorf("the secret is not in the vm.create request")
	}
	for what, s := range map[string]string{"child argv/environ (stdout)": h.stdout.String(), "stderr": h.stderr.String(), "log": h.log.String()} {
		if l := leaks(forms, []byte(s)); len(l) > 0 {
			t.Errorf("%s leaks the secret (%v)", what, l)
		}
	}
	if !strings.Contains(h.stdout.String(), "== argv") {
		t.Errorf("child did not dump argv: %q", h.stdout.String())
	}
	if files := listFiles(t, rt); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
}

// notExecutable is a file the test's user may not execute.
func notExecutable(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "qemu-not-executable")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
