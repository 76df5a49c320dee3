package nixosmodules

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/integration/testenv"
)

const testKey = "vmcred-ed25519-public 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

// TestNixParse runs check.sh over the repository, and over a broken file to
// show that a syntax error fails it.
func TestNixParse(t *testing.T) {
	testenv.NeedTool(t, "nix-instantiate", nixHint)
	run := func(args ...string) (string, error) {
		cmd := exec.Command("./check.sh", args...)
		cmd.Env = nixEnv(t)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(); err != nil {
		t.Errorf("check.sh: %v\n%s", err, out)
	}

	broken := filepath.Join(t.TempDir(), "broken.nix")
	if err := os.WriteFile(broken, []byte("{ config, ... }:\n{\n  services.x = ;\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(broken)
	if err == nil {
		t.Fatalf("check.sh accepted a broken file:\n%s", out)
	}
	if !strings.Contains(out, "broken.nix:3:") {
		t.Errorf("check.sh does not say where the error is (want broken.nix:3:…):\n%s", out)
	}
}

// TestGuestModuleMatchesUnitFile evaluates guest.nix (with a trusted key, as
// the unit file assumes) and compares the unit it generates with
// guest/systemd/vmcred-guest.service, directive by directive. Values are
// compared as word lists, so `After=a b` equals a Nix list [ "a" "b" ], and
// yes/true and no/false are the same.
func TestGuestModuleMatchesUnitFile(t *testing.T) {
	r := mustEval(t, evalArgs{
		Module: "guest.nix",
		Config: map[string]any{"services": map[string]any{"vmcred-guest": map[string]any{
			"enable":      true,
			"trustedKeys": []string{testKey},
		}}},
	})
	svc, ok := r.Config.Systemd.Services["vmcred-guest"]
	if !ok {
		t.Fatal("guest.nix defines no systemd.services.vmcred-guest")
	}
	got := renderNixService(t, svc)

	b, err := os.ReadFile("../guest/systemd/vmcred-guest.service")
	if err != nil {
		t.Fatal(err)
	}
	want, err := parseUnit(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("guest.nix's vmcred-guest unit differs from guest/systemd/vmcred-guest.service (-file +module):\n%s", diff)
	}
	if svc.RestartIfChanged == nil || *svc.RestartIfChanged {
		t.Error("restartIfChanged must be false: re-running the agent on switch would present a spent channel token")
	}
}

func TestGuestModuleOptions(t *testing.T) {
	guest := func(cfg map[string]any) *evalResult {
		t.Helper()
		cfg["enable"] = true
		return mustEval(t, evalArgs{
			Module: "guest.nix",
			Config: map[string]any{"services": map[string]any{"vmcred-guest": cfg}},
		})
	}
	execStart := func(r *evalResult) string {
		return fmt.Sprint(r.Config.Systemd.Services["vmcred-guest"].ServiceConfig["ExecStart"])
	}

	t.Run("defaults", func(t *testing.T) {
		r := guest(map[string]any{})
		if got, want := execStart(r), "/usr/bin/vmcred-guest load --credstore /run/credstore --status-dir /run/vmcred --system-credentials /run/vmcred-system-credentials"; got != want {
			t.Errorf("ExecStart = %q, want %q (no keys, no --trust-key)", got, want)
		}
		if !anyContains(r.Warnings, "trustedKeys is empty") {
			t.Errorf("no warning about missing trusted keys: %q", r.Warnings)
		}
		if msgs := failed(r.Assertions); len(msgs) > 0 {
			t.Errorf("assertions fail with defaults: %q", msgs)
		}
		if len(r.Config.Boot.Initrd.KernelModules) != 0 {
			t.Errorf("verified mode loads %q in the initrd; only systemd mode needs that", r.Config.Boot.Initrd.KernelModules)
		}
	})

	t.Run("trusted keys become files", func(t *testing.T) {
		r := guest(map[string]any{"trustedKeys": []string{testKey, "/etc/keys/other.pub"}})
		if got := r.Config.Environment.Etc["vmcred/trusted.d/key-1.pub"]; got["text"] != testKey || got["mode"] != "0444" {
			t.Errorf("key-1.pub = %v", got)
		}
		if got := r.Config.Environment.Etc["vmcred/trusted.d/key-2.pub"]; got["source"] != "/etc/keys/other.pub" {
			t.Errorf("key-2.pub = %v", got)
		}
		if len(r.Warnings) != 0 {
			t.Errorf("warnings with keys: %q", r.Warnings)
		}
	})

	t.Run("a string that is not a key", func(t *testing.T) {
		r := guest(map[string]any{"trustedKeys": []string{"ssh-ed25519 AAAA"}})
		if !anyContains(failed(r.Assertions), "a string must be the key itself") {
			t.Errorf("no failing assertion for a non-key string; failing: %q", failed(r.Assertions))
		}
	})

	t.Run("systemd mode", func(t *testing.T) {
		r := guest(map[string]any{"mode": "systemd", "trustedKeys": []string{testKey}})
		if got := execStart(r); !strings.HasSuffix(got, " --trust-key /etc/vmcred/trusted.d --system-credentials /run/vmcred-system-credentials") {
			t.Errorf("ExecStart = %q", got)
		}
		if diff := cmp.Diff([]string{"dmi-sysfs", "qemu_fw_cfg"}, r.Config.Boot.Initrd.KernelModules); diff != "" {
			t.Errorf("initrd modules (-want +got):\n%s", diff)
		}
	})

	t.Run("channel and extra flags", func(t *testing.T) {
		r := guest(map[string]any{"channel": "vsock:2:8889", "extraArgs": []string{"--timeout", "60s"}, "credstore": "/run/vmcred-store"})
		want := "/usr/bin/vmcred-guest load --credstore /run/vmcred-store --status-dir /run/vmcred --system-credentials /run/vmcred-system-credentials --channel vsock:2:8889 --timeout 60s"
		if got := execStart(r); got != want {
			t.Errorf("ExecStart = %q, want %q", got, want)
		}
		sc := r.Config.Systemd.Services["vmcred-guest"].ServiceConfig
		if diff := cmp.Diff([]any{"vmcred-store", "vmcred"}, sc["RuntimeDirectory"]); diff != "" {
			t.Errorf("RuntimeDirectory (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]any{"/run/vmcred-store", "/run/vmcred"}, sc["ReadWritePaths"]); diff != "" {
			t.Errorf("ReadWritePaths (-want +got):\n%s", diff)
		}
	})

	t.Run("consumers", func(t *testing.T) {
		r := guest(map[string]any{"consumers": []string{"demo-oem-credentials", "other.service"}})
		for _, name := range []string{"demo-oem-credentials", "other"} {
			s, ok := r.Config.Systemd.Services[name]
			if !ok {
				t.Errorf("consumer %s: no systemd.services entry", name)
				continue
			}
			if !contains(s.Requires, "vmcred-guest.service") || !contains(s.After, "vmcred-guest.service") {
				t.Errorf("consumer %s: requires=%q after=%q, want vmcred-guest.service in both", name, s.Requires, s.After)
			}
		}
	})

	t.Run("values a unit file cannot take unquoted", func(t *testing.T) {
		for _, cfg := range []map[string]any{
			{"extraArgs": []string{"--x", "a b"}},
			{"extraArgs": []string{"100%"}},
			{"credstore": "/var/lib/credstore"},
			{"channel": "vsock:2:x"},
		} {
			cfg["enable"] = true
			_, err := evalModule(t, evalArgs{
				Module: "guest.nix",
				Config: map[string]any{"services": map[string]any{"vmcred-guest": cfg}},
			})
			if err == nil || !strings.Contains(err.Error(), "is not of type") {
				t.Errorf("%v: want a type error, got %v", cfg, err)
			}
		}
	})
}

// TestKernelModules keeps guest.nix's default list and
// guest/systemd/modules-load.d/vmcred.conf the same.
func TestKernelModules(t *testing.T) {
	r := mustEval(t, evalArgs{
		Module: "guest.nix",
		Config: map[string]any{"services": map[string]any{"vmcred-guest": map[string]any{"enable": true}}},
	})
	b, err := os.ReadFile("../guest/systemd/modules-load.d/vmcred.conf")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' && line[0] != ';' {
			want = append(want, line)
		}
	}
	if diff := cmp.Diff(want, r.Config.Boot.KernelModules); diff != "" {
		t.Errorf("boot.kernelModules vs modules-load.d/vmcred.conf (-file +module):\n%s", diff)
	}
}

// unitDirectives maps "Section.Key" to the words of all its values, in order.
type unitDirectives map[string][]string

// parseUnit reads a unit file: sections, KEY=VALUE lines, comments (# ;),
// backslash continuations.
func parseUnit(b []byte) (unitDirectives, error) {
	raw := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	pending := ""
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if pending != "" {
			line = pending + " " + line
			pending = ""
		}
		if strings.HasSuffix(line, `\`) {
			pending = strings.TrimSuffix(line, `\`)
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("line %d: not KEY=VALUE in a section: %q", n, line)
			}
			key := section + "." + strings.TrimSpace(k)
			raw[key] = append(raw[key], strings.TrimSpace(v))
		}
	}
	return normalize(raw), sc.Err()
}

// renderNixService turns a NixOS service definition into the directives
// NixOS writes for it. restartIfChanged and overrideStrategy are NixOS
// settings, not directives.
func renderNixService(t *testing.T, s nixService) unitDirectives {
	t.Helper()
	raw := map[string][]string{}
	add := func(key string, vals ...string) {
		if len(vals) > 0 {
			raw[key] = append(raw[key], vals...)
		}
	}
	if s.Description != "" {
		add("Unit.Description", s.Description)
	}
	add("Unit.Documentation", strings.Join(s.Documentation, " "))
	for key, list := range map[string][]string{
		"Wants": s.Wants, "Requires": s.Requires, "BindsTo": s.BindsTo,
		"After": s.After, "Before": s.Before, "Conflicts": s.Conflicts,
	} {
		if len(list) > 0 {
			add("Unit."+key, strings.Join(list, " "))
		}
	}
	for k, v := range s.UnitConfig {
		add("Unit."+k, nixValues(t, v)...)
	}
	for k, v := range s.ServiceConfig {
		add("Service."+k, nixValues(t, v)...)
	}
	if len(s.WantedBy) > 0 {
		add("Install.WantedBy", strings.Join(s.WantedBy, " "))
	}
	return normalize(raw)
}

// nixValues renders an option value the way NixOS's unit generator does: a
// list is one line per element, a bool is true/false.
func nixValues(t *testing.T, v any) []string {
	t.Helper()
	switch v := v.(type) {
	case bool:
		return []string{fmt.Sprint(v)}
	case string:
		return []string{v}
	case float64:
		return []string{fmt.Sprint(int64(v))}
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, nixValues(t, x)...)
		}
		return out
	}
	t.Fatalf("unexpected value %#v in a unit definition", v)
	return nil
}

func normalize(raw map[string][]string) unitDirectives {
	out := unitDirectives{}
	for k, vals := range raw {
		words := strings.Fields(strings.Join(vals, " "))
		if len(words) == 1 {
			switch words[0] {
			case "yes", "true":
				words[0] = "true"
			case "no", "false":
				words[0] = "false"
			}
		}
		if words == nil {
			words = []string{}
		}
		out[k] = words
	}
	return out
}

// keys is for error messages.
func (d unitDirectives) keys() []string {
	var ks []string
	for k := range d {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func TestParseUnit(t *testing.T) {
	got, err := parseUnit([]byte("# c\n[Unit]\nAfter=a b\nAfter=c\n; c\n[Service]\nX=\nExecStart=/bin/x \\\n  --y\nRemainAfterExit=yes\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := unitDirectives{
		"Unit.After":              {"a", "b", "c"},
		"Service.X":               {},
		"Service.ExecStart":       {"/bin/x", "--y"},
		"Service.RemainAfterExit": {"true"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseUnit (-want +got):\n%s\nkeys: %q", diff, got.keys())
	}
	if _, err := parseUnit([]byte("After=x\n")); err == nil {
		t.Error("parseUnit accepted a directive outside a section")
	}
}
