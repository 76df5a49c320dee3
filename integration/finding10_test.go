package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
)

// TestFinding10ManifestBoundToVMAndExpires is finding 10 of issue 17: a
// manifest signed for another VM, or an old pack, was accepted, because
// the guest was not told its VM name (load without --vm checked none) and
// pack set no not-after. Now load refuses a manifest unless it is told its
// VM name (--vm) or told explicitly that any VM will do (--allow-any-vm),
// and pack gives every manifest a lifetime (--lifetime, 720h by default).
func TestFinding10ManifestBoundToVMAndExpires(t *testing.T) {
	work := t.TempDir()
	secret := filepath.Join(work, "api-key")
	if err := os.WriteFile(secret, randomText(), 0o400); err != nil {
		t.Fatal(err)
	}
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "host")); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	dmi := filepath.Join(work, "vm-a.dmi")
	packed := time.Now()
	if r := run(t, built.host, nil, "pack", "--vm", "vm-a", "--hypervisor", "dmi", "--out", dmi, "--sign-key", filepath.Join(work, "host.key"),
		"--cred", "api-key=file:"+secret); r.code != 0 {
		t.Fatalf("pack: %s", r.stderr)
	}
	load := func(t *testing.T, name string, args ...string) result {
		t.Helper()
		return run(t, built.guest, nil, append([]string{"load", "--dmi-table", dmi, "--trust-key", filepath.Join(work, "host.pub"),
			"--credstore", filepath.Join(shmDir(t), "credstore"), "--status-dir", filepath.Join(work, "status-"+name), "--system-credentials", ""}, args...)...)
	}

	t.Run("the VM name", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			code int
			want string
		}{
			{"not told", nil, cli.ExitFailure, "--vm"},
			{"another VM", []string{"--vm", "vm-b"}, cli.ExitFailure, `issued for vm "vm-a"`},
			{"its own", []string{"--vm", "vm-a"}, 0, ""},
			{"any VM, explicitly", []string{"--allow-any-vm"}, 0, ""},
			{"its own, from the image", []string{"--vm-file", vmFile(t, work, "ok", "vm-a\n", 0o755)}, 0, ""},
			{"another VM, from the image", []string{"--vm-file", vmFile(t, work, "other", "vm-b\n", 0o755)}, cli.ExitFailure, `issued for vm "vm-a"`},
			{"a name file others can write", []string{"--vm-file", vmFile(t, work, "open", "vm-a\n", 0o777)}, cli.ExitFailure, "could be replaced by another user"},
		} {
			r := load(t, strings.ReplaceAll(tc.name, " ", "-"), tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%s: exit %d, want %d with %q: %s", tc.name, r.code, tc.code, tc.want, r.stderr)
			}
		}
	})

	t.Run("the lifetime", func(t *testing.T) {
		for _, tc := range []struct {
			after time.Duration
			ok    bool
		}{{29 * 24 * time.Hour, true}, {31 * 24 * time.Hour, false}} {
			now := packed.Add(tc.after)
			rep, err := agent.Load(agent.Config{
				Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: strings.TrimPrefix(dmi, "/")},
				Credstore: filepath.Join(shmDir(t), "credstore"), StatusDir: filepath.Join(work, "status-lifetime"),
				VM: "vm-a", Now: func() time.Time { return now },
			})
			expired := err != nil && strings.Contains(strings.Join(rep.Problems, "; "), "expired")
			if tc.ok && err != nil || !tc.ok && !expired {
				t.Errorf("load %v after pack: err %v, problems %q; want ok=%v", tc.after, err, rep.Problems, tc.ok)
			}
		}
	})
}

// vmFile writes name to dir/NAME/vm-name, the folder with mode dirMode.
func vmFile(t *testing.T, work, dir, name string, dirMode os.FileMode) string {
	t.Helper()
	d := filepath.Join(work, "etc-"+dir)
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, "vm-name")
	if err := os.WriteFile(p, []byte(name), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, dirMode); err != nil {
		t.Fatal(err)
	}
	return p
}
