package nixosmodules

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The seed (shared/seed.md): clan vars generator test-vm-secrets with files
// api-key, db-password and jwt-secret, passed as OEM credentials API_KEY,
// DB_PASSWORD and JWT_SECRET, plus the static strings
// io.systemd.credential:ENVIRONMENT=test and
// io.systemd.credential:CLUSTER=britton-desktop, read by the guest's
// demo-oem-credentials service.
var (
	seedSecrets = map[string]string{ // clan file -> credential name
		"api-key":     "API_KEY",
		"db-password": "DB_PASSWORD",
		"jwt-secret":  "JWT_SECRET",
	}
	seedStatic = map[string]string{
		"ENVIRONMENT": "test",
		"CLUSTER":     "britton-desktop",
	}
	seedLoadCredential = []string{
		"environment:ENVIRONMENT",
		"cluster:CLUSTER",
		"api-key:API_KEY",
		"db-password:DB_PASSWORD",
		"jwt-secret:JWT_SECRET",
	}
)

// TestExampleCoversSeed reads examples/test-vm.nix as text: every secret and
// static string of the seed is there, and nothing widens a secret's
// permissions the way the seed's fix did.
func TestExampleCoversSeed(t *testing.T) {
	b, err := os.ReadFile("examples/test-vm.nix")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	for file, name := range seedSecrets {
		for _, re := range []string{
			`"` + regexp.QuoteMeta(file) + `"\.secret\s*=\s*true;`,
			regexp.QuoteMeta(name) + `\.file\s*=\s*secrets\."` + regexp.QuoteMeta(file) + `"\.path;`,
		} {
			if !regexp.MustCompile(re).MatchString(src) {
				t.Errorf("examples/test-vm.nix does not match %s", re)
			}
		}
	}
	for name, value := range seedStatic {
		re := regexp.QuoteMeta(name) + `\s*=\s*"` + regexp.QuoteMeta(value) + `";`
		if !regexp.MustCompile(re).MatchString(src) {
			t.Errorf("examples/test-vm.nix lacks the static string %s=%s (%s)", name, value, re)
		}
	}
	for _, lc := range seedLoadCredential {
		if !strings.Contains(src, `"`+lc+`"`) {
			t.Errorf("demo-oem-credentials lost LoadCredential %s", lc)
		}
	}
	// Not even in a comment.
	if regexp.MustCompile(`group\s*=\s*"kvm"`).MatchString(src) {
		t.Error(`examples/test-vm.nix contains group = "kvm": that makes every VM's secrets readable by every VM`)
	}
	// In the code; the comments explain what the seed did.
	code := regexp.MustCompile(`(?m)#.*$`).ReplaceAllString(src, "")
	for _, bad := range []struct{ re, why string }{
		{`group\s*=`, "a group override on a secret"},
		{`mode\s*=\s*"0?440"`, "group-readable secrets"},
		{`owner\s*=`, "the seed's owner override; clan's default (root) is right"},
		{`platformOEMStrings\s*=`, "OEM strings on cloud-hypervisor's command line"},
		{`io\.systemd\.credential:`, "hand-written OEM strings"},
		{`/run/secrets/`, "hard-coded clan vars path (they moved in 2026)"},
	} {
		if loc := regexp.MustCompile(bad.re).FindStringIndex(code); loc != nil {
			line := strings.Count(code[:loc[0]], "\n") + 1
			t.Errorf("examples/test-vm.nix:%d matches %s: %s", line, bad.re, bad.why)
		}
	}
}

// TestExampleEvaluates evaluates examples/test-vm.nix with tests/example.nix
// and puts its settings through host.nix and guest.nix.
func TestExampleEvaluates(t *testing.T) {
	out, err := nixEval(t, "import "+abs(t, "tests/example.nix")+" { }")
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Generators map[string]struct {
			Files map[string]map[string]any
		}
		Vms          map[string]map[string]any
		Imports      []string
		GuestImports []string
		Host         struct {
			Assertions []assertion
			Warnings   []string
			Systemd    struct{ Services map[string]nixService }
		}
		Guest struct {
			Assertions   []assertion
			Warnings     []string
			Unit         nixService
			ConsumerDeps nixService
		}
		Demo nixService
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decode: %v\n%s", err, out)
	}

	if !anyContains(r.Imports, "nixos-modules/host.nix") || !anyContains(r.GuestImports, "nixos-modules/guest.nix") {
		t.Errorf("the example must import host.nix (got %q) and its VM guest.nix (got %q)", r.Imports, r.GuestImports)
	}
	// Secrets keep clan's defaults: only `secret` is set on each file.
	for file := range seedSecrets {
		if diff := cmp.Diff(map[string]any{"secret": true}, r.Generators["test-vm-secrets"].Files[file]); diff != "" {
			t.Errorf("generator file %s (-want +got):\n%s", file, diff)
		}
	}
	if diff := cmp.Diff(map[string]any{"secret": true}, r.Generators["vmcred-signing"].Files["signing.key"]); diff != "" {
		t.Errorf("signing key file (-want +got):\n%s", diff)
	}

	vm := r.Vms["test-vm"]
	wantCreds := map[string]any{}
	for file, name := range seedSecrets {
		wantCreds[name] = map[string]any{"file": "/run/secrets/vars/per-machine/britton-desktop/test-vm-secrets/" + file}
	}
	if diff := cmp.Diff(wantCreds, vm["credentials"]); diff != "" {
		t.Errorf("services.vmcred.vms.test-vm.credentials (-want +got):\n%s", diff)
	}
	wantStatic := map[string]any{}
	for k, v := range seedStatic {
		wantStatic[k] = v
	}
	if diff := cmp.Diff(wantStatic, vm["static"]); diff != "" {
		t.Errorf("services.vmcred.vms.test-vm.static (-want +got):\n%s", diff)
	}

	if msgs := append(failed(r.Host.Assertions), failed(r.Guest.Assertions)...); len(msgs) > 0 {
		t.Errorf("the example fails assertions: %q", msgs)
	}
	if ws := append(r.Host.Warnings, r.Guest.Warnings...); len(ws) > 0 {
		t.Errorf("the example causes warnings: %q", ws)
	}
	if sc := r.Host.Systemd.Services["microvm@test-vm"].ServiceConfig; len(sc["LoadCredential"].([]any)) != 4 {
		t.Errorf("microvm@test-vm LoadCredential = %v, want the three secrets and the signing key", sc["LoadCredential"])
	}
	if _, ok := r.Host.Systemd.Services["vmcred-ready@test-vm"]; !ok {
		t.Error("no vmcred-ready@test-vm.service")
	}

	want := "/usr/bin/vmcred-guest load --credstore /run/credstore --status-dir /run/vmcred --trust-key /etc/vmcred/trusted.d --system-credentials /run/vmcred-system-credentials --channel vsock-stream:2:8889"
	if got := r.Guest.Unit.ServiceConfig["ExecStart"]; got != want {
		t.Errorf("the VM's agent ExecStart = %q, want %q", got, want)
	}
	if !contains(r.Guest.ConsumerDeps.Requires, "vmcred-guest.service") || !contains(r.Guest.ConsumerDeps.After, "vmcred-guest.service") {
		t.Errorf("demo-oem-credentials does not require and follow the agent: %+v", r.Guest.ConsumerDeps)
	}
	var lc []string
	for _, v := range r.Demo.ServiceConfig["LoadCredential"].([]any) {
		lc = append(lc, v.(string))
	}
	if diff := cmp.Diff(seedLoadCredential, lc); diff != "" {
		t.Errorf("demo-oem-credentials LoadCredential (-seed +example):\n%s", diff)
	}
}
