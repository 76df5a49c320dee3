package nixosmodules

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// TestHostUnitsVerify runs `systemd-analyze verify` (this machine's
// systemd) over the host units the real evaluation renders for a QEMU and a
// cloud-hypervisor VM: the push unit, its path unit, the readiness unit and
// microvm.nix's microvm@ with vmcred's drop-in, in a root holding this
// machine's system units, with a stand-in for every executable. It catches
// unknown directives, bad values, a bad specifier (%d in push's
// --sign-key) or escape in ExecStart=, and dependencies that do not
// resolve. Any message about a vmcred unit fails the test; a self-check
// shows a misspelt directive is reported.
func TestHostUnitsVerify(t *testing.T) {
	sa := testenv.NeedTool(t, "systemd-analyze", "apt-get install -y --no-install-recommends systemd")
	for _, tc := range []struct{ caseName, vm, extra string }{
		{"qemu-microvm", "qvm", ""},
		{"cloud-hypervisor", "chvm", `services.vmcred.vms.chvm.static.NOTE = "50% of \"all\" $HOME";`},
	} {
		t.Run(tc.caseName, func(t *testing.T) {
			r := mustVariant(t, tc.caseName, tc.extra)
			noFailures(t, r)
			units := []string{"vmcred-push@" + tc.vm + ".service", "vmcred-push@" + tc.vm + ".path", "vmcred-ready@" + tc.vm + ".service"}
			out, err := verifyHostUnits(t, sa, r, units, nil)
			var ours []string
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.Contains(line, "vmcred") {
					ours = append(ours, line)
				} else if line != "" {
					t.Logf("systemd-analyze (not about vmcred's units): %s", line)
				}
			}
			if len(ours) > 0 {
				t.Errorf("systemd-analyze verify reports problems with vmcred's units:\n%s", strings.Join(ours, "\n"))
			}
			if err != nil && len(ours) > 0 {
				t.Errorf("systemd-analyze verify: %v", err)
			}

			// Not vacuous: a misspelt directive in the push unit is reported.
			out, _ = verifyHostUnits(t, sa, r, units, func(files map[string]string) {
				p := "vmcred-push@" + tc.vm + ".service"
				files[p] = strings.Replace(files[p], "[Service]\n", "[Service]\nProtectSytem=full\n", 1)
			})
			if !strings.Contains(out, "ProtectSytem") {
				t.Errorf("a misspelt directive was not reported; output:\n%s", out)
			}
		})
	}
}

// verifyHostUnits writes the host's vmcred and microvm@ unit files from r
// into a root (with this machine's system units and stand-in executables)
// and runs systemd-analyze verify on units.
func verifyHostUnits(t *testing.T, sa string, r *hostEval, units []string, mutate func(map[string]string)) (string, error) {
	t.Helper()
	root := t.TempDir()
	testenv.CopySystemUnits(t, root)
	files := map[string]string{}
	for name, text := range r.Units {
		files[name] = text
	}
	// microvm.nix's other units, which microvm@ requires (the harness
	// renders only vmcred's and microvm@): empty stand-ins.
	for _, key := range []string{"Requires", "Wants"} {
		for _, v := range directives(files["microvm@.service"], "Unit", key) {
			for _, dep := range strings.Fields(v) {
				tmpl := strings.Replace(dep, "@%i.", "@.", 1)
				if _, ok := files[tmpl]; !ok && strings.HasPrefix(tmpl, "microvm-") {
					files[tmpl] = "# stand-in for microvm.nix's " + tmpl + "\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
				}
			}
		}
	}
	if mutate != nil {
		mutate(files)
	}
	for name, text := range files {
		writeTestFile(t, filepath.Join(root, "etc/systemd/system", name), text, 0o644)
		for _, key := range []string{"ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost"} {
			for _, cmd := range directives(text, "Service", key) {
				f := strings.Fields(cmd)
				if len(f) == 0 {
					continue
				}
				exe := strings.TrimLeft(f[0], "-@:+!")
				if strings.Contains(exe, "%") {
					exe = strings.ReplaceAll(exe, "%i", strings.TrimSuffix(strings.TrimPrefix(name, "microvm@"), ".service.d/overrides.conf"))
				}
				if filepath.IsAbs(exe) {
					writeTestFile(t, filepath.Join(root, exe), "#!/bin/sh\n", 0o755)
				}
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sa, append([]string{"verify", "--root=" + root, "--man=no"}, units...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func writeTestFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
