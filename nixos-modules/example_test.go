package nixosmodules

import (
	"os"
	"regexp"
	"strings"
	"testing"
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

// TestExampleEvaluates evaluates examples/test-vm.nix as a user imports it
// (tests/cases/example.nix: next to microvm.nix's real host module, clan
// vars from a stand-in of clan-core's interface) with the real module
// system, and checks the rendered units on both sides and the script
// microvm.nix's runner calls.
func TestExampleEvaluates(t *testing.T) {
	r := mustEvalCase(t, "example")
	noFailures(t, r)
	if len(r.Warnings) > 0 || len(r.Vms["test-vm"].Warnings) > 0 {
		t.Errorf("the example causes warnings: %q %q", r.Warnings, r.Vms["test-vm"].Warnings)
	}
	vars := "/run/secrets/vars/per-machine/britton-desktop/"
	drop := unit(t, r.Units, "microvm@test-vm.service.d/overrides.conf")
	if v := directives(drop, "Service", "LoadCredential"); len(v) != 0 {
		t.Errorf("microvm@test-vm gets LoadCredential=%q: cloud-hypervisor needs no secret now", v)
	}
	wantDirectives(t, "microvm@test-vm drop-in", drop, "Service", "RuntimeDirectory", "vmcred-test-vm")
	// cloud-hypervisor with vsock: microvm.nix makes the unit Type=notify,
	// which is why the push does not order after it.
	wantDirectives(t, "microvm@test-vm drop-in", drop, "Service", "Type", "notify")
	ready := unit(t, r.Units, "vmcred-ready@test-vm.service")
	wantDirectives(t, "vmcred-ready@test-vm", ready, "Unit", "BindsTo", "microvm@test-vm.service")
	wantDirectives(t, "vmcred-ready@test-vm", ready, "Install", "WantedBy", "microvm@test-vm.service")
	wantPush(t, r, "test-vm",
		"vmcred-host push --vm test-vm --connect hybrid:/var/lib/microvms/test-vm/notify.vsock:730 --sign-key %d/vmcred.signing-key --from-credentials-directory=API_KEY,DB_PASSWORD,JWT_SECRET --static CLUSTER=britton-desktop --static ENVIRONMENT=test --status-dir /run/vmcred-test-vm --timeout 120s",
		"API_KEY:"+vars+"test-vm-secrets/api-key",
		"DB_PASSWORD:"+vars+"test-vm-secrets/db-password",
		"JWT_SECRET:"+vars+"test-vm-secrets/jwt-secret",
		"vmcred.signing-key:"+vars+"test-vm-vmcred-signing/signing.key")
	// Rotation: a new clan vars value starts the push again.
	wantPushPath(t, r, "test-vm",
		vars+"test-vm-secrets/api-key", vars+"test-vm-secrets/db-password", vars+"test-vm-secrets/jwt-secret")

	vm := r.Vms["test-vm"]
	if vm.Hypervisor != "cloud-hypervisor" {
		t.Errorf("hypervisor %s, want cloud-hypervisor", vm.Hypervisor)
	}
	if vm.ExtraArgsScript != nil {
		t.Errorf("extraArgsScript %q: nothing goes on cloud-hypervisor's command line", *vm.ExtraArgsScript)
	}
	wantAgent(t, "test-vm", vm, 730)
	guestOrdering(t, "test-vm", vm, "demo-oem-credentials")
	demo := unit(t, vm.Units, "demo-oem-credentials.service")
	wantDirectives(t, "demo-oem-credentials", demo, "Unit", "After", "network.target vmcred-guest.service")
	wantDirectives(t, "demo-oem-credentials", demo, "Service", "LoadCredential", seedLoadCredential...)
	if got := vm.Etc["vmcred/trusted.d/key-1.pub"]; !strings.HasPrefix(got, "vmcred-ed25519-public ") {
		t.Errorf("the VM's trusted key = %q, want the signing generator's public key", got)
	}
}
