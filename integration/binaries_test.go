package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bins holds the paths of the binaries TestMain built for this run.
type bins struct{ host, guest string }

var built bins // set once by TestMain, read-only afterwards

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == standInMarker {
		os.Exit(standInHypervisor(os.Args[2:]))
	}
	dir, err := os.MkdirTemp("", "vmcred-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	built = bins{host: filepath.Join(dir, "vmcred-host"), guest: filepath.Join(dir, "vmcred-guest")}
	for out, pkg := range map[string]string{built.host: "./host/cmd/vmcred-host", built.guest: "./guest/cmd/vmcred-guest"} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one finished command.
type result struct {
	stdout, stderr string
	code           int
}

// run runs a built binary with args and a clean environment (plus extra).
func run(t *testing.T, bin string, extraEnv []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}, extraEnv...)
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", filepath.Base(bin), err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}
