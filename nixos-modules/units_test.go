package nixosmodules

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// guestEval is what tests/guest-harness.nix prints: a NixOS configuration
// with vmcred's guest module, evaluated with the real module system.
type guestEval struct {
	FailedAssertions []string
	Warnings         []string
	Units            map[string]string
	Etc              map[string]struct {
		Text, Source *string
		Mode         string
	}
	KernelModules       []string
	InitrdKernelModules []string
}

// evalGuest evaluates services.vmcred-guest = { enable = true; SETTINGS }
// (Nix text) plus more module text.
func evalGuest(t *testing.T, settings, more string) (*guestEval, error) {
	t.Helper()
	ni := testenv.NeedTool(t, "nix-instantiate", nixHint)
	f := filepath.Join(t.TempDir(), "guest.nix")
	src := fmt.Sprintf("{ lib, pkgs, ... }: {\n  services.vmcred-guest = { enable = true; %s };\n%s\n}\n", settings, more)
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ni, "--read-write-mode", "--store", filepath.Join(t.TempDir(), "store"),
		"--eval", "--strict", "--json", abs(t, "tests/guest-harness.nix"), "--arg", "module", f)
	cmd.Env = nixEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nix-instantiate guest-harness.nix: %v\n%s", err, withoutTraces(stderr.String()))
	}
	var r guestEval
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("decode: %v\n%s", err, stdout.Bytes())
	}
	return &r, nil
}

func mustGuest(t *testing.T, settings, more string) *guestEval {
	t.Helper()
	r, err := evalGuest(t, settings, more)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var storeVmcredGuest = regexp.MustCompile(`/nix/store/[^/ ]+/bin/vmcred-guest`)

// agentExecStart is the agent's ExecStart with the package's store path
// written as /usr (the unit file's).
func agentExecStart(t *testing.T, r *guestEval) string {
	t.Helper()
	return storeVmcredGuest.ReplaceAllString(strings.TrimPrefix(lineWith(t, "vmcred-guest.service", unit(t, r.Units, "vmcred-guest.service"), "ExecStart="), "ExecStart="), "/usr/bin/vmcred-guest")
}

// TestGuestModuleMatchesUnitFile evaluates guest.nix (with a trusted key, as
// the unit file assumes) and compares the unit text NixOS renders for it
// with guest/systemd/vmcred-guest.service, directive by directive. Values
// are compared as word lists; yes/true and no/false are the same. The two
// lines only NixOS writes are checked apart: PATH= (NixOS's default path)
// and X-RestartIfChanged=false (restartIfChanged = false: re-running the
// agent on switch would re-read spent per-boot material).
func TestGuestModuleMatchesUnitFile(t *testing.T) {
	r := mustGuest(t, fmt.Sprintf("trustedKeys = [ %q ];", testKey), "")
	text := storeVmcredGuest.ReplaceAllString(unit(t, r.Units, "vmcred-guest.service"), "/usr/bin/vmcred-guest")
	got, err := parseUnit([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if !equalStrings(got["Service.X-RestartIfChanged"], []string{"false"}) {
		t.Errorf("X-RestartIfChanged = %q, want false (restartIfChanged = false)", got["Service.X-RestartIfChanged"])
	}
	delete(got, "Service.X-RestartIfChanged")
	if env := got["Service.Environment"]; len(env) != 1 || !strings.HasPrefix(env[0], `"PATH=`) {
		t.Errorf("Environment = %q, want NixOS's PATH only", env)
	}
	delete(got, "Service.Environment")

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
}

func TestGuestModuleOptions(t *testing.T) {
	key := fmt.Sprintf("trustedKeys = [ %q ];", testKey)
	t.Run("defaults", func(t *testing.T) {
		r := mustGuest(t, key, `networking.hostName = "test-vm";`)
		if got, want := agentExecStart(t, r), "/usr/bin/vmcred-guest agent --vm-file /etc/vmcred/vm-name --listen vsock::730 --credstore /run/credstore --status-dir /run/vmcred --trust-key /etc/vmcred/trusted.d --system-credentials /run/credentials/@system"; got != want {
			t.Errorf("ExecStart = %q, want %q", got, want)
		}
		if len(r.FailedAssertions) > 0 || len(r.Warnings) > 0 {
			t.Errorf("with defaults: failed assertions %q, warnings %q", r.FailedAssertions, r.Warnings)
		}
		if len(r.InitrdKernelModules) != 0 {
			t.Errorf("verified mode loads %q in the initrd; only systemd mode needs that", r.InitrdKernelModules)
		}
		// The VM's name: networking.hostName when nothing says otherwise.
		if n := r.Etc["vmcred/vm-name"]; n.Text == nil || *n.Text != "test-vm\n" || n.Mode != "0444" {
			t.Errorf("vmcred/vm-name = %+v, want text \"test-vm\\n\", mode 0444", n)
		}
		u := unit(t, r.Units, "vmcred-guest.service")
		wantDirectives(t, "agent", u, "Service", "CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")
		wantDirectives(t, "agent", u, "Service", "Restart", "on-failure")
		noMountNamespace(t, "agent", u)
	})

	t.Run("vmName and hostVM", func(t *testing.T) {
		r := mustGuest(t, key+` vmName = "web-1";`, `networking.hostName = "other";`)
		if n := r.Etc["vmcred/vm-name"]; n.Text == nil || *n.Text != "web-1\n" {
			t.Errorf("vmcred/vm-name = %+v, want web-1", n)
		}
		r = mustGuest(t, key+` hostVM = "flk";`, `networking.hostName = "other";`)
		if n := r.Etc["vmcred/vm-name"]; n.Text == nil || *n.Text != "flk\n" {
			t.Errorf("with hostVM: vmcred/vm-name = %+v, want flk", n)
		}
	})

	t.Run("no trusted key", func(t *testing.T) {
		r := mustGuest(t, "", "")
		if !anyContains(r.FailedAssertions, "trustedKeys is empty: the agent accepts only a manifest signed by a trusted key") {
			t.Errorf("no failing assertion without trusted keys: %q", r.FailedAssertions)
		}
	})

	t.Run("no VM name", func(t *testing.T) {
		r := mustGuest(t, key, `networking.hostName = "";`)
		if !anyContains(r.FailedAssertions, "vmName is not set") {
			t.Errorf("no failing assertion without a VM name: %q", r.FailedAssertions)
		}
	})

	t.Run("port not privileged", func(t *testing.T) {
		for _, port := range []string{"0", "1024", "8889"} {
			r := mustGuest(t, key+" port = "+port+";", "")
			if !anyContains(r.FailedAssertions, "port = "+port+": the agent listens only on a privileged vsock port (1-1023") {
				t.Errorf("port %s: failed assertions %q", port, r.FailedAssertions)
			}
		}
	})

	t.Run("removed options name the new way", func(t *testing.T) {
		for setting, want := range map[string]string{
			`channel = "vsock:2:8889";`: "the host dials it (vmcred-host push)",
			`allowUnverified = true;`:   "always requires a manifest signed",
		} {
			r := mustGuest(t, key+" "+setting, "")
			if !anyContains(r.FailedAssertions, want) {
				t.Errorf("%s: want a failed assertion with %q, got %q", setting, want, r.FailedAssertions)
			}
		}
	})

	t.Run("trusted keys become files", func(t *testing.T) {
		r := mustGuest(t, fmt.Sprintf("trustedKeys = [ %q /etc/keys/other.pub ];", testKey), "")
		if k := r.Etc["vmcred/trusted.d/key-1.pub"]; k.Text == nil || *k.Text != testKey || k.Mode != "0444" {
			t.Errorf("key-1.pub = %+v", k)
		}
		if k := r.Etc["vmcred/trusted.d/key-2.pub"]; k.Source == nil || *k.Source != "/etc/keys/other.pub" || k.Mode != "0444" {
			t.Errorf("key-2.pub = %+v", k)
		}
		if len(r.Warnings) != 0 || len(r.FailedAssertions) != 0 {
			t.Errorf("with keys: warnings %q, failed assertions %q", r.Warnings, r.FailedAssertions)
		}
	})

	t.Run("a string that is not a key", func(t *testing.T) {
		r := mustGuest(t, `trustedKeys = [ "ssh-ed25519 AAAA" ];`, "")
		if !anyContains(r.FailedAssertions, "a string must be the key itself") {
			t.Errorf("no failing assertion for a non-key string; failing: %q", r.FailedAssertions)
		}
	})

	t.Run("systemd mode", func(t *testing.T) {
		r := mustGuest(t, fmt.Sprintf(`mode = "systemd"; trustedKeys = [ %q ];`, testKey), "")
		if got := agentExecStart(t, r); !strings.HasSuffix(got, " --trust-key /etc/vmcred/trusted.d --system-credentials /run/credentials/@system") {
			t.Errorf("ExecStart = %q", got)
		}
		if diff := cmp.Diff([]string{"dmi-sysfs", "qemu_fw_cfg"}, r.InitrdKernelModules); diff != "" {
			t.Errorf("initrd modules (-want +got):\n%s", diff)
		}
	})

	t.Run("port and credstore and extra flags", func(t *testing.T) {
		r := mustGuest(t, key+` port = 731; extraArgs = [ "--peer-cid" "1" ]; credstore = "/run/vmcred-store";`, "")
		want := "/usr/bin/vmcred-guest agent --vm-file /etc/vmcred/vm-name --listen vsock::731 --credstore /run/vmcred-store --status-dir /run/vmcred --trust-key /etc/vmcred/trusted.d --system-credentials /run/credentials/@system --peer-cid 1"
		if got := agentExecStart(t, r); got != want {
			t.Errorf("ExecStart = %q, want %q", got, want)
		}
		u := unit(t, r.Units, "vmcred-guest.service")
		// No mount namespace, no RuntimeDirectory= (a bind mount of the
		// store on itself): the rotation exchanges the store folder.
		noMountNamespace(t, "agent", u)
	})

	t.Run("consumers", func(t *testing.T) {
		r := mustGuest(t, key+` consumers = [ "demo-oem-credentials" "other.service" ];`,
			`systemd.services.demo-oem-credentials.script = "true";
			 systemd.services.other.serviceConfig.ExecStart = "/bin/true";`)
		for _, name := range []string{"demo-oem-credentials", "other"} {
			u := unit(t, r.Units, name+".service")
			wantDirectives(t, name, u, "Unit", "Requires", "vmcred-guest.service")
			wantDirectives(t, name, u, "Unit", "After", "vmcred-guest.service")
		}
		if len(r.FailedAssertions) != 0 {
			t.Errorf("failed assertions: %q", r.FailedAssertions)
		}
	})

	t.Run("a consumer that is not defined", func(t *testing.T) {
		r := mustGuest(t, key+` consumers = [ "demo-oem-credentails" ];`, `systemd.services.demo-oem-credentials.script = "true";`)
		if !anyContains(r.FailedAssertions, "demo-oem-credentails, which this configuration does not define") {
			t.Errorf("a misspelt consumer: failed assertions %q", r.FailedAssertions)
		}
	})

	t.Run("values a unit file cannot take unquoted", func(t *testing.T) {
		for _, settings := range []string{
			`extraArgs = [ "--x" "a b" ];`,
			`extraArgs = [ "100%" ];`,
			`credstore = "/var/lib/credstore";`,
			`vmName = "a b";`,
		} {
			_, err := evalGuest(t, settings, "")
			if err == nil || !strings.Contains(err.Error(), "is not of type") {
				t.Errorf("%s: want a type error, got %v", settings, err)
			}
		}
	})
}

// TestKernelModules keeps guest.nix's default list and
// guest/systemd/modules-load.d/vmcred.conf the same.
func TestKernelModules(t *testing.T) {
	r := mustGuest(t, "", "")
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
	if diff := cmp.Diff(want, r.KernelModules); diff != "" {
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
