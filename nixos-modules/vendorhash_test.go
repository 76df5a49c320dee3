package nixosmodules

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// TestVendorHash recomputes package.nix's vendorHash the way buildGoModule
// does (the NAR hash of what `go mod vendor` writes for package.nix's src:
// go.mod, go.sum, host/, guest/, shared/, integration/testenv/) and, when
// it is stale, prints the new value: a failure under CI=true (the Nix
// package would not build), a skip elsewhere. A src that lacks one of
// vmcred's own packages that it imports fails everywhere: that is no
// matter of being offline. It changes with go.mod and with the imports of those
// folders. Offline: the modules come from the local module cache
// (`go mod download` fills it).
func TestVendorHash(t *testing.T) {
	nixBin := testenv.NeedTool(t, "nix", nixHint)
	goBin := testenv.NeedTool(t, "go", "install Go")

	b, err := os.ReadFile("package.nix")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*vendorHash = "([^"]+)";`).FindSubmatch(b)
	if m == nil {
		t.Fatal(`package.nix has no line vendorHash = "…";`)
	}
	have := string(m[1])

	// A copy of exactly package.nix's src.
	src := filepath.Join(t.TempDir(), "src")
	for _, p := range []string{"go.mod", "go.sum", "host", "guest", "shared", "integration/testenv"} {
		if err := copyTree(filepath.Join("..", p), filepath.Join(src, p)); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vendor := exec.CommandContext(ctx, goBin, "mod", "vendor")
	vendor.Dir = src
	vendor.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := vendor.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "no required module provides package github.com/vmcred/vmcred/") {
			t.Fatalf("package.nix's src lacks a package of vmcred's that its code or tests import; add it to the fileset and to this test's list:\n%s", out)
		}
		msg := "go mod vendor (offline; run `go mod download` first): " + err.Error() + "\n" + string(out)
		testenv.SkipOrFail(t, "%s", msg)
	}

	hash := exec.CommandContext(ctx, nixBin, "--extra-experimental-features", "nix-command",
		"--store", "dummy://", "hash", "path", "--type", "sha256", filepath.Join(src, "vendor"))
	hash.Env = nixEnv(t)
	out, err := hash.Output()
	if err != nil {
		t.Fatalf("nix hash path: %v", err)
	}
	if want := strings.TrimSpace(string(out)); want != have {
		msg := "package.nix vendorHash is stale: set\n\tvendorHash = \"" + want + "\";\n" +
			"(go.mod, go.sum or the imports of host/, guest/ or shared/ changed; see nixos-modules/README.md)"
		// Any import of a new package changes the hash; outside CI that
		// must not fail the tests of whoever added it.
		if os.Getenv("CI") != "true" {
			t.Skip(msg)
		}
		t.Error(msg)
	}
}

// copyTree copies regular files and folders (the Go source has no links).
func copyTree(from, to string) error {
	return filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(dst, 0o755)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
		return nil
	})
}
