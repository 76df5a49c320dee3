package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmcred/vmcred/host/internal/goldenfile"
	"github.com/vmcred/vmcred/shared/cli/clitest"
)

// TestHelp holds the help of vmcred-host and of each of its commands in
// testdata/help/ (go test -update rewrites them); a golden file for a
// command that no longer exists fails the test.
func TestHelp(t *testing.T) {
	texts := clitest.HelpTexts(t, "vmcred-host", commands(newHarness(t).deps))
	for name, text := range texts {
		goldenfile.Check(t, *update, filepath.Join("help", name), text)
	}
	ents, err := os.ReadDir(filepath.Join("testdata", "help"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, ok := texts[e.Name()]; !ok {
			t.Errorf("testdata/help/%s: no such command; remove the file", e.Name())
		}
	}
}
