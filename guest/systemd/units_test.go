package systemdunits

import (
	"bufio"
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/integration/testenv"
)

// Our units, where they go in the verify root, and the names systemd-analyze
// uses for them in its messages.
var installed = []struct{ src, dst string }{
	{"vmcred-guest.service", "etc/systemd/system/vmcred-guest.service"},
	{"examples/demo-oem-credentials.service", "etc/systemd/system/demo-oem-credentials.service"},
	{"examples/demo-oem-credentials.service.d/vmcred.conf", "etc/systemd/system/demo-oem-credentials.service.d/vmcred.conf"},
}

var ourNames = []string{"vmcred-guest.service", "demo-oem-credentials.service", "vmcred.conf"}

func TestFilesEmbedded(t *testing.T) {
	want := []string{
		"examples/demo-oem-credentials.service",
		"examples/demo-oem-credentials.service.d/vmcred.conf",
		"modules-load.d/vmcred.conf",
		"vmcred-guest.service",
	}
	var got []string
	err := fs.WalkDir(Files, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			got = append(got, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("embedded files (-want +got):\n%s", diff)
	}
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` over the agent's
// unit and the example consumer with its drop-in, installed and enabled in a
// root that also holds this machine's own system units, so that
// dependencies resolve and ordering cycles through sysinit.target show up.
// Any message about our units fails the test.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa := testenv.NeedTool(t, "systemd-analyze", "apt-get install -y --no-install-recommends systemd")
	out, err := verify(t, sa, nil)
	var ours []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		if mentionsOurs(line) {
			ours = append(ours, line)
		} else {
			t.Logf("systemd-analyze (not about our units): %s", line)
		}
	}
	if len(ours) > 0 {
		t.Errorf("systemd-analyze verify reports problems with our units:\n%s\n\nfull output:\n%s", strings.Join(ours, "\n"), out)
	}
	if err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdAnalyzeVerifyCatchesProblems makes sure the check above is not
// vacuous: a misspelt directive and a missing executable must be reported.
func TestSystemdAnalyzeVerifyCatchesProblems(t *testing.T) {
	sa := testenv.NeedTool(t, "systemd-analyze", "apt-get install -y --no-install-recommends systemd")
	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, root string)
		want   string
	}{
		{
			name: "unknown directive",
			mutate: func(t *testing.T, root string) {
				p := filepath.Join(root, "etc/systemd/system/vmcred-guest.service")
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b = bytes.Replace(b, []byte("[Service]\n"), []byte("[Service]\nProtectSytem=strict\n"), 1)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "ProtectSytem",
		},
		{
			name: "missing executable",
			mutate: func(t *testing.T, root string) {
				if err := os.Remove(filepath.Join(root, "usr/bin/vmcred-guest")); err != nil {
					t.Fatal(err)
				}
			},
			want: "/usr/bin/vmcred-guest",
		},
		{
			name: "drop-in requires a unit that does not exist",
			mutate: func(t *testing.T, root string) {
				if err := os.Remove(filepath.Join(root, "etc/systemd/system/vmcred-guest.service")); err != nil {
					t.Fatal(err)
				}
			},
			want: "vmcred-guest.service not found",
		},
		{
			name: "ordering cycle",
			mutate: func(t *testing.T, root string) {
				if _, err := os.Stat(filepath.Join(root, "usr/lib/systemd/system/basic.target")); err != nil {
					t.Skip("no system units on this machine to form a cycle with")
				}
				p := filepath.Join(root, "etc/systemd/system/vmcred-guest.service")
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				// Before=sysinit.target and after basic.target, which is
				// after sysinit.target.
				b = bytes.Replace(b, []byte("[Unit]\n"), []byte("[Unit]\nWants=basic.target\nAfter=basic.target\n"), 1)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "ordering cycle",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := verify(t, sa, func(root string) { tc.mutate(t, root) })
			if !strings.Contains(out, tc.want) {
				t.Errorf("systemd-analyze verify did not report %q; output:\n%s", tc.want, out)
			}
		})
	}
}

// verify builds the root and runs systemd-analyze verify in it; mutate, if
// set, changes the root first. It returns the combined output.
func verify(t *testing.T, sa string, mutate func(root string)) (string, error) {
	t.Helper()
	root := t.TempDir()
	testenv.CopySystemUnits(t, root)
	var units [][]byte
	for _, f := range installed {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		units = append(units, b)
		writeFile(t, filepath.Join(root, f.dst), b, 0o644)
	}
	// Enable the units ([Install] WantedBy=) and give every ExecStart*= a
	// stand-in executable inside the root (--root resolves them there).
	for i, b := range units {
		for _, target := range directive(b, "Install", "WantedBy") {
			name := filepath.Base(installed[i].dst)
			link := filepath.Join(root, "etc/systemd/system", target+".wants", name)
			if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("../"+name, link); err != nil {
				t.Fatal(err)
			}
		}
		for _, key := range []string{"ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost"} {
			for _, cmd := range directive(b, "Service", key) {
				exe := strings.TrimLeft(strings.Fields(cmd)[0], "-@:+!")
				writeFile(t, filepath.Join(root, exe), []byte("#!/bin/sh\n"), 0o755)
			}
		}
	}
	if mutate != nil {
		mutate(root)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sa, "verify", "--root="+root, "--man=no",
		"vmcred-guest.service", "demo-oem-credentials.service", "multi-user.target")
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mentionsOurs(line string) bool {
	for _, n := range ourNames {
		if strings.Contains(line, n) {
			return true
		}
	}
	return false
}

func writeFile(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
}

// directive returns the values of KEY= in [SECTION], in order. Enough for
// these files: no line continuations.
func directive(unit []byte, section, key string) []string {
	var vals []string
	cur := ""
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = line[1 : len(line)-1]
		case cur == section:
			if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == key {
				vals = append(vals, strings.TrimSpace(v))
			}
		}
	}
	return vals
}

func TestModulesLoad(t *testing.T) {
	b, err := os.ReadFile("modules-load.d/vmcred.conf")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && line[0] != '#' && line[0] != ';' {
			got = append(got, line)
		}
	}
	want := []string{"dmi-sysfs", "qemu_fw_cfg", "vmw_vsock_virtio_transport"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modules-load.d/vmcred.conf (-want +got):\n%s", diff)
	}
}

// mountNamespaceDirectives are the sandbox options with which systemd
// builds a mount namespace for the unit (exec_needs_mount_namespace in
// systemd's src/core/execute.c; PrivateIPC= through its /dev/mqueue).
// The agent's unit sets none: see its threat-model comment.
var mountNamespaceDirectives = []string{
	"ProtectSystem", "ProtectHome", "PrivateDevices", "PrivateTmp", "PrivateIPC", "PrivateMounts",
	"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
	"ProtectProc", "ProcSubset", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
	"BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "RootDirectory", "RootImage",
	"RuntimeDirectory", "LogNamespace",
}

// TestExecStart pins the agent's command line: the long-lived
// `vmcred-guest agent` on its privileged port (DESIGN §8), the VM's name
// from its file, the folders of DESIGN §7.
func TestExecStart(t *testing.T) {
	b, err := os.ReadFile("vmcred-guest.service")
	if err != nil {
		t.Fatal(err)
	}
	got := directive(b, "Service", "ExecStart")
	want := []string{"/usr/bin/vmcred-guest agent --vm-file /etc/vmcred/vm-name --listen vsock::730 --credstore /run/credstore --status-dir /run/vmcred --trust-key /etc/vmcred/trusted.d --system-credentials /run/credentials/@system"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ExecStart (-want +got):\n%s", diff)
	}
	// Binding port 730 needs CAP_NET_BIND_SERVICE; a long-lived agent
	// comes back after a crash.
	if diff := cmp.Diff([]string{"CAP_NET_BIND_SERVICE"}, directive(b, "Service", "CapabilityBoundingSet")); diff != "" {
		t.Errorf("CapabilityBoundingSet (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"on-failure"}, directive(b, "Service", "Restart")); diff != "" {
		t.Errorf("Restart (-want +got):\n%s", diff)
	}
	if got := directive(b, "Service", "RemainAfterExit"); len(got) != 0 {
		t.Errorf("RemainAfterExit=%q: the agent is long-lived", got)
	}
	// No mount namespace (see mountNamespaceDirectives); and no
	// RuntimeDirectory=, which would be one more: the rotation's folder
	// exchange cannot cross a mount point. The agent creates its folders.
	for _, key := range mountNamespaceDirectives {
		if v := directive(b, "Service", key); len(v) != 0 {
			t.Errorf("%s=%q gives the agent a mount namespace: ~200 ms of every boot (BENCHMARKS.md), and systemd 252 then hides /run/credentials/@system from it", key, v)
		}
	}
	if rd := directive(b, "Service", "RuntimeDirectory"); len(rd) != 0 {
		t.Errorf("RuntimeDirectory=%q: /run/credstore would be a mount point in the unit", rd)
	}
}
