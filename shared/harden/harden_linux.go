//go:build linux

package harden

import (
	"errors"
	"fmt"
	"syscall"
)

// prSetDumpable and prGetDumpable are prctl(2) options (linux/prctl.h).
const (
	prSetDumpable = 4
	prGetDumpable = 3
)

// Apply makes this process non-dumpable (PR_SET_DUMPABLE 0) and sets its
// RLIMIT_CORE to 0. Only the first can fail the call: a core limit that a
// seccomp filter forbids changing (systemd's SystemCallFilter=~@resources,
// as the guest unit has) is harmless once the process is not dumpable,
// since the kernel writes no core for it.
func Apply() error {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetDumpable, 0, 0); errno != 0 {
		return fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", errno)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{}); err != nil && !errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("setrlimit(RLIMIT_CORE, 0): %w", err)
	}
	return nil
}

// Dumpable reports the process's dumpable flag (PR_GET_DUMPABLE): 0 after
// Apply.
func Dumpable() (int, error) {
	r, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prGetDumpable, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("prctl(PR_GET_DUMPABLE): %w", errno)
	}
	return int(r), nil
}
