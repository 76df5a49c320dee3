package nixosmodules

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

const nixHint = "apt-get install -y --no-install-recommends nix-bin"

// nixEnv is the environment for nix commands: no nixbld group needed, and
// nothing written to the real HOME.
func nixEnv(t *testing.T) []string {
	return append(os.Environ(), "NIX_CONFIG=build-users-group =", "HOME="+t.TempDir())
}

// abs returns the absolute path of a file in this folder.
func abs(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// nixEval evaluates a Nix expression strictly and returns its JSON.
// --store dummy:// keeps nix from creating /nix/store and /nix/var.
func nixEval(t *testing.T, expr string) ([]byte, error) {
	t.Helper()
	ni := testenv.NeedTool(t, "nix-instantiate", nixHint)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ni, "--store", "dummy://", "--eval", "--strict", "--json", "-E", expr)
	cmd.Env = nixEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nix-instantiate: %v\n%s", err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// evalArgs are tests/eval.nix's arguments (see there); Module is a file in
// this folder.
type evalArgs struct {
	Module         string         `json:"-"`
	Config         map[string]any `json:"config,omitempty"`
	ForeignConfig  map[string]any `json:"foreignConfig,omitempty"`
	ForeignOptions map[string]any `json:"foreignOptions,omitempty"`
	Guests         map[string]any `json:"guests,omitempty"`
	Package        string         `json:"package,omitempty"`
}

type assertion struct {
	Assertion bool
	Message   string
}

// nixService is a NixOS systemd.services.<name> value as the modules set it.
type nixService struct {
	Description      string
	Documentation    []string
	WantedBy         []string
	Wants            []string
	Requires         []string
	BindsTo          []string
	After            []string
	Before           []string
	Conflicts        []string
	RestartIfChanged *bool
	OverrideStrategy string
	UnitConfig       map[string]any
	ServiceConfig    map[string]any
}

type evalResult struct {
	Config struct {
		Boot struct {
			KernelModules []string
			Initrd        struct{ KernelModules []string }
		}
		Environment struct {
			Etc            map[string]map[string]any
			SystemPackages []string
		}
		Systemd struct {
			Services map[string]nixService
		}
	}
	Assertions []assertion
	Warnings   []string
	Scripts    map[string]string
	Guests     map[string]struct {
		Assertions []assertion
		Microvm    struct{ ExtraArgsScript string }
		Services   struct {
			VmcredGuest map[string]any `json:"vmcred-guest"`
		}
	}
}

// evalModule evaluates a module with tests/eval.nix.
func evalModule(t *testing.T, a evalArgs) (*evalResult, error) {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	argsFile := filepath.Join(t.TempDir(), "args.json")
	if err := os.WriteFile(argsFile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	expr := fmt.Sprintf("import %s (builtins.fromJSON (builtins.readFile %s) // { module = %s; })",
		abs(t, "tests/eval.nix"), argsFile, abs(t, a.Module))
	out, err := nixEval(t, expr)
	if err != nil {
		return nil, err
	}
	var r evalResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decode eval.nix output: %v\n%s", err, out)
	}
	return &r, nil
}

func mustEval(t *testing.T, a evalArgs) *evalResult {
	t.Helper()
	r, err := evalModule(t, a)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// failed returns the messages of the assertions that do not hold.
func failed(as []assertion) []string {
	var msgs []string
	for _, a := range as {
		if !a.Assertion {
			msgs = append(msgs, a.Message)
		}
	}
	return msgs
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func anyContains(list []string, sub string) bool {
	for _, x := range list {
		if strings.Contains(x, sub) {
			return true
		}
	}
	return false
}
