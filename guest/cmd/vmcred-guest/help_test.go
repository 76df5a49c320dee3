package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/shared/cli/clitest"
)

// TestHelp holds the help of vmcred-guest and of each of its commands, with
// a real guest's defaults, in testdata/help/ (go test -update rewrites
// them); a golden file for a command that no longer exists fails the test.
func TestHelp(t *testing.T) {
	dir := filepath.Join("testdata", "help")
	texts := clitest.HelpTexts(t, "vmcred-guest", productionDefaults().commands())
	for name, text := range texts {
		path := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, text, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%v (go test -update writes it)", err)
			continue
		}
		if diff := cmp.Diff(string(want), string(text)); diff != "" {
			t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, ok := texts[e.Name()]; !ok {
			t.Errorf("%s: no such command; remove the file", filepath.Join(dir, e.Name()))
		}
	}
}
