// Package testenv holds the rule for tests that need something the
// machine may lack (a tool, a tmpfs, a mount): on a developer machine they
// skip with a fix-it hint; under CI=true they fail, because CI must never
// pass by skipping. Tests in every part of the tree import it; it imports
// nothing of vmcred's.
package testenv

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// SkipOrFail skips t with the message, or fails it when CI=true.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (CI=true: failing instead of skipping)", args...)
	}
	t.Skipf(format, args...)
}

// NeedTool returns the path of the program name, or skips t (fails it
// under CI=true) saying how to install it: hint.
func NeedTool(t testing.TB, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, "%s not found: %s", name, hint)
	}
	return p
}

// CopySystemUnits copies this machine's system unit folder into
// root/usr/lib/systemd/system, so that `systemd-analyze verify --root=root`
// resolves the targets and units the tested units name (sysinit.target,
// local-fs.target, …) as on a real system. Without such a folder it logs
// that and copies nothing.
func CopySystemUnits(t testing.TB, root string) {
	t.Helper()
	var src string
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			src = d
			break
		}
	}
	if src == "" {
		t.Log("no system unit folder on this machine; verifying without it")
		return
	}
	dst := filepath.Join(root, "usr/lib/systemd/system")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(to, b, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("copy system units: %v", err)
	}
}
