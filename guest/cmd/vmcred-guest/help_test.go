package main

import (
	"path/filepath"
	"testing"

	"github.com/vmcred/vmcred/shared/cli/clitest"
)

// TestHelp holds the help of vmcred-guest and of each of its commands in
// testdata/help/, with the defaults of a real guest.
func TestHelp(t *testing.T) {
	clitest.CheckHelp(t, "vmcred-guest", productionDefaults().commands(), filepath.Join("testdata", "help"), *update)
}
