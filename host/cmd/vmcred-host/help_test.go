package main

import (
	"path/filepath"
	"testing"

	"github.com/vmcred/vmcred/shared/cli/clitest"
)

// TestHelp holds the help of vmcred-host and of each of its commands in
// testdata/help/.
func TestHelp(t *testing.T) {
	clitest.CheckHelp(t, "vmcred-host", commands(newHarness(t).deps), filepath.Join("testdata", "help"), *update)
}
