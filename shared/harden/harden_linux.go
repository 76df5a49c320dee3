//go:build linux

package harden

import (
	"errors"
	"fmt"
	"runtime"
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

// Scrub clears what wiped secrets leave behind in the calling thread, once
// they are handed over (issue 17, finding 6). Copying a value (memmove)
// passes it through the CPU's vector registers, and whenever a signal
// reaches the thread (Go's preemption signal, SIGCHLD, ...) the kernel
// saves every register in a frame on the thread's signal stack — Go heap
// memory that stays allocated for the life of the thread and that no Wipe
// reaches: /proc/PID/mem showed a 20 KiB value's first 16 and last 128
// bytes laid out as memmove's Y4 and X5-X12 next to the frame's "SXPF"
// magic. Scrub zeroes the dead stack below its caller and the vector
// registers, then signals its own thread (SIGURG, which Go's runtime
// ignores when it has not asked for a preemption): the kernel writes the
// new, zeroed register state where the last frame was, since every frame
// starts at the top of the signal stack. Other threads are not reached:
// do the secret work on one goroutine and call Scrub from it.
func Scrub() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	scrubFrame()
	zeroVectorRegisters()
	_ = syscall.Tgkill(syscall.Getpid(), syscall.Gettid(), syscall.SIGURG)
}
