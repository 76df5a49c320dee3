package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/guest/debug"
)

// findingCodes decodes the "findings" of a --json output.
func findingCodes(t *testing.T, out []byte) []string {
	t.Helper()
	var v struct {
		Findings []debug.Finding `json:"findings"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	var codes []string
	for _, f := range v.Findings {
		if f.Fix == "" {
			t.Errorf("finding %s has no fix", f.Code)
		}
		codes = append(codes, f.Code)
	}
	return codes
}

func hasCode(codes []string, code string) bool {
	for _, c := range codes {
		if c == code {
			return true
		}
	}
	return false
}

// TestDebugExitCodes covers DESIGN §7's exit codes for what the goldens
// do not: usage errors, unreadable sources and a credstore changed after
// the load.
func TestDebugExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		scenario string
		prepare  func(tr *tree)
		args     []string
		code     int
		finding  string // a code the --json output must hold
	}{
		{name: "show without a name", scenario: "good", args: []string{"show"}, code: 2},
		{name: "show with two names", scenario: "good", args: []string{"show", "a", "b"}, code: 2},
		{name: "show an invalid name", scenario: "good", args: []string{"show", "a:b"}, code: 2},
		{name: "reveal and json", scenario: "good", args: []string{"show", "api-key", "--reveal", "--json"}, code: 2},
		{name: "list takes no arguments", scenario: "good", args: []string{"list", "x"}, code: 2},
		{name: "list a missing credstore", scenario: "good", args: []string{"list", "--credstore", "/nonexistent", "--json"}, code: 3, finding: debug.CodeCredstoreMissing},
		{name: "status of a boot without a load", scenario: "no-status", args: []string{"status", "--json"}, code: 3, finding: debug.CodeStatusMissing},
		{name: "verify without DMI", scenario: "good", prepare: func(tr *tree) {
			if err := os.RemoveAll(tr.path("sys/firmware/dmi")); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"verify", "--json"}, code: 3, finding: debug.CodeDMIMissing},
		{name: "verify a credstore file changed after the load", scenario: "good", prepare: func(tr *tree) {
			tr.write("run/credstore/api-key", []byte("something else entirely, 32 by"), 0o400)
		}, args: []string{"verify", "--json"}, code: 1, finding: debug.CodeCredstoreMismatch},
		{name: "verify a credstore file removed after the load", scenario: "good", prepare: func(tr *tree) {
			if err := os.Remove(tr.path("run/credstore/db-password")); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"verify", "--json"}, code: 1, finding: debug.CodeCredstoreFileMissing},
		{name: "list a credstore file removed after the load", scenario: "good", prepare: func(tr *tree) {
			if err := os.Remove(tr.path("run/credstore/db-password")); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"list", "--json"}, code: 0, finding: debug.CodeServedNone},
		{name: "verify with the wrong vm", scenario: "good", args: []string{"verify", "--vm", "other", "--json"}, code: 1, finding: debug.CodeManifestWrongVM},
		{name: "verify without trust keys warns", scenario: "good", prepare: func(tr *tree) {
			if err := os.RemoveAll(tr.path("etc/vmcred/trusted.d")); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"verify", "--json"}, code: 0, finding: debug.CodeNoTrustKeys},
		{name: "insecure file in the credstore", scenario: "good", prepare: func(tr *tree) {
			if err := os.Chmod(tr.path("run/credstore/api-key"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"list", "--credstore", "/run/credstore", "--json"}, code: 0, finding: debug.CodeCredstoreInsecure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := build(t, tc.scenario, fixedValue)
			if tc.prepare != nil {
				tc.prepare(tr)
			}
			r := run(tr.defaults(), tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			if tc.code == 2 && !strings.Contains(string(r.stderr), "vmcred-guest") {
				t.Errorf("usage error without a message: %q", r.stderr)
			}
			if tc.finding != "" {
				if codes := findingCodes(t, r.stdout); !hasCode(codes, tc.finding) {
					t.Errorf("findings %v lack %s", codes, tc.finding)
				}
			}
		})
	}
}

// TestFirmwareListShape keeps the --json shape integration tests and
// scripts rely on (DESIGN §7): credentials with index and verified,
// skipped with index and reason.
func TestFirmwareListShape(t *testing.T) {
	tr := build(t, "failed", fixedValue)
	r := run(tr.defaults(), "list", "--json", "--dmi-table", tr.path("sys/firmware/dmi/tables/DMI"))
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var v map[string]any
	if err := json.Unmarshal(r.stdout, &v); err != nil {
		t.Fatal(err)
	}
	creds, _ := v["credentials"].([]any)
	skipped, _ := v["skipped"].([]any)
	if len(creds) == 0 || len(skipped) == 0 {
		t.Fatalf("credentials %d, skipped %d", len(creds), len(skipped))
	}
	first := creds[0].(map[string]any)
	for _, k := range []string{"name", "size", "sha256", "source", "prefix", "index", "verified"} {
		if _, ok := first[k]; !ok {
			t.Errorf("credential lacks %q: %v", k, first)
		}
	}
	if first["index"] != float64(0) {
		t.Errorf("index of the first credential = %v, want 0", first["index"])
	}
	s := skipped[0].(map[string]any)
	for _, k := range []string{"index", "reason"} {
		if _, ok := s[k]; !ok {
			t.Errorf("skipped lacks %q: %v", k, s)
		}
	}
}
