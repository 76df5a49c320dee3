package nixosmodules

import (
	"bytes"
	"context"
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
