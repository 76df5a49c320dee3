// Package launch runs a hypervisor as a child of vmcred-host run: with the
// same stdin, stdout and stderr, with SIGTERM and SIGINT forwarded to it,
// and with its exit status passed back; and it drives cloud-hypervisor's
// REST API over its Unix socket (PUT vm.create, then vm.boot) once the
// child is listening.
//
// This package is for host code (host/cmd/vmcred-host). It does not log.
package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// DefaultKillGrace is how long Run waits after SIGTERM before SIGKILL when
// it stops the child itself (AfterStart failed).
const DefaultKillGrace = 5 * time.Second

// Config says what to run and how.
type Config struct {
	// Path is the program; Args its arguments (without argv[0]).
	Path string
	Args []string
	// Stdin, Stdout and Stderr are the child's. An *os.File is passed to
	// the child as is; another writer gets a copying goroutine (tests).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Env is the child's environment; nil means this process's.
	Env []string
	// Signals delivers the signals to forward. Nil means Run subscribes to
	// SIGTERM and SIGINT itself for as long as the child runs. Tests pass
	// their own channel.
	Signals <-chan os.Signal
	// AfterStart, if set, runs once the child has started, with a channel
	// that is closed when the child exits; its context carries the child's
	// pid (ChildPID). If it fails, Run stops the
	// child (SIGTERM, then SIGKILL after KillGrace) and returns its error.
	AfterStart func(ctx context.Context, exited <-chan struct{}) error
	// KillGrace defaults to DefaultKillGrace.
	KillGrace time.Duration
}

// ExitError is how the child ended when that was not a clean exit 0.
type ExitError struct {
	// Program is the program's path.
	Program string
	// Code is the exit status, or 128+N for a child killed by signal N
	// (as a shell reports it).
	Code int
	// Signal is the signal that killed the child, if one did.
	Signal syscall.Signal
}

// Error says how the child ended, e.g. "qemu exited with status 1".
func (e *ExitError) Error() string {
	if e.Signal != 0 {
		return fmt.Sprintf("%s was killed by signal %d (%v), exit status %d", e.Program, int(e.Signal), e.Signal, e.Code)
	}
	return fmt.Sprintf("%s exited with status %d", e.Program, e.Code)
}

// Run starts the child, forwards signals to it, runs AfterStart, and waits
// for it to exit. It returns nil when the child exits 0, an *ExitError
// when it exits otherwise, or another error when it could not be started
// or AfterStart failed (the child is then stopped first).
//
// ctx bounds AfterStart only: cancelling it never kills the child, whose
// lifetime is controlled by the signals it is sent, as for systemd-vmspawn.
func Run(ctx context.Context, cfg Config) error {
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = cfg.Stdin, cfg.Stdout, cfg.Stderr, cfg.Env
	sigs := cfg.Signals
	if sigs == nil {
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(ch)
		sigs = ch
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cfg.Path, err)
	}
	exited := make(chan struct{})
	waitErr := make(chan error, 1)
	go func() {
		waitErr <- cmd.Wait()
		close(exited)
	}()
	forwardDone := make(chan struct{})
	go func() {
		defer close(forwardDone)
		for {
			select {
			case s := <-sigs:
				// The child may have exited between the signal and now;
				// os.ErrProcessDone is expected then.
				_ = cmd.Process.Signal(s)
			case <-exited:
				return
			}
		}
	}()

	var startErr error
	if cfg.AfterStart != nil {
		startErr = cfg.AfterStart(context.WithValue(ctx, childPIDKey{}, cmd.Process.Pid), exited)
		if startErr != nil {
			grace := cfg.KillGrace
			if grace == 0 {
				grace = DefaultKillGrace
			}
			stop(cmd.Process, exited, grace)
		}
	}
	err := <-waitErr
	<-forwardDone
	if startErr != nil {
		return startErr
	}
	return exitError(cfg.Path, err)
}

// childPIDKey is the context key of the child's pid.
type childPIDKey struct{}

// ChildPID returns the pid of the child Run started, from the context Run
// gives AfterStart: CHBoot sends secrets only to it or its descendants.
func ChildPID(ctx context.Context) (int, bool) {
	pid, ok := ctx.Value(childPIDKey{}).(int)
	return pid, ok
}

// stop sends SIGTERM, then SIGKILL if the child has not exited after grace.
func stop(p *os.Process, exited <-chan struct{}, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = p.Kill()
	}
}

func exitError(program string, err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("wait for %s: %w", program, err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return &ExitError{Program: program, Code: 128 + int(ws.Signal()), Signal: ws.Signal()}
	}
	return &ExitError{Program: program, Code: ee.ExitCode()}
}
