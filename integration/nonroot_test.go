package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestDebugCommandsAsNonRoot: the guest's debug commands run by a user who
// cannot read the firmware, the credstore or the status file say "cannot
// read" with exit 3 and "run as root", never "not found" (1), "FAILED"
// (1) or success (0). As root the commands run as nobody; otherwise the
// files are made mode 0, which their owner cannot read either.
func TestDebugCommandsAsNonRoot(t *testing.T) {
	base := t.TempDir()
	p := func(parts ...string) string { return filepath.Join(append([]string{base}, parts...)...) }
	if err := os.Mkdir(p("secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("secrets", "api-key"), []byte("not-for-nobody"), 0o400); err != nil {
		t.Fatal(err)
	}
	if r := run(t, built.host, nil, "pack", "--vm", "demo", "--hypervisor", "dmi", "--out", p("DMI"), "--cred", "api-key=file:"+p("secrets", "api-key")); r.code != 0 {
		t.Fatalf("pack: %d %s", r.code, r.stderr)
	}
	if err := os.Mkdir(p("status"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("status", "status.json"), []byte(`{"outcome":"ready"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("credstore"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("credstore", "api-key"), []byte("not-for-nobody"), 0o400); err != nil {
		t.Fatal(err)
	}
	guest := built.guest
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		// nobody must reach the binary and the folder, not the files.
		bin, err := os.ReadFile(built.guest)
		if err != nil {
			t.Fatal(err)
		}
		guest = p("vmcred-guest")
		if err := os.WriteFile(guest, bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{base, filepath.Dir(base)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	} else {
		for _, f := range []string{p("DMI"), p("credstore"), p("status")} {
			if err := os.Chmod(f, 0); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(f, 0o700) })
		}
	}
	loc := []string{"--credstore", p("credstore"), "--system-credentials", "", "--search-path", p("credstore"), "--status-dir", p("status")}
	tests := []struct {
		name string
		args []string
		want []string
		not  []string
	}{
		{"list --dmi-table", []string{"list", "--dmi-table", p("DMI")}, []string{"open " + p("DMI") + ": permission denied", "run the command as root"}, []string{"open " + strings.TrimPrefix(p("DMI"), "/")}},
		{"show --reveal", append([]string{"show", "api-key", "--reveal"}, loc...), []string{"cannot list " + p("credstore"), "run the command as root"}, []string{"no file", "not-for-nobody"}},
		{"verify", append([]string{"verify", "--dmi-table", p("DMI")}, loc...), []string{"INCOMPLETE", "verification incomplete", "run the command as root"}, []string{"FAILED"}},
		{"status", []string{"status", "--status-dir", p("status")}, []string{"run the command as root"}, nil},
		{"list", append([]string{"list"}, loc...), []string{"run the command as root"}, nil},
		{"show", append([]string{"show", "api-key", "--dmi-table", p("DMI")}, loc...), []string{"run the command as root"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(guest, tt.args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			all := out.String() + errb.String()
			if code != 3 {
				t.Errorf("exit %d, want 3 (cannot read):\n%s", code, all)
			}
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(all, n) {
					t.Errorf("output holds %q:\n%s", n, all)
				}
			}
		})
	}
}
