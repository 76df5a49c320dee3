// Package testenv holds the rule for tests that need something the
// machine may lack (a tool, a tmpfs, a mount): on a developer machine they
// skip with a fix-it hint; under CI=true they fail, because CI must never
// pass by skipping. Tests in every part of the tree import it; it imports
// nothing of vmcred's.
package testenv

import (
	"os"
	"os/exec"
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
