//go:build !linux

package harden

import (
	"errors"
	"fmt"
	"runtime"
)

// Apply is not implemented here: vmcred runs on Linux.
func Apply() error {
	return fmt.Errorf("process hardening on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// Dumpable is not implemented here.
func Dumpable() (int, error) {
	return 0, fmt.Errorf("dumpable flag on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// Scrub clears the dead stack and vector registers of the calling thread;
// see the Linux version.
func Scrub() {
	scrubFrame()
	zeroVectorRegisters()
}
