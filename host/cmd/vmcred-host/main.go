// Command vmcred-host is vmcred's host side: it packs a micro-VM's
// credentials for its hypervisor (pack), checks that the hypervisor's user
// can read them (check), sends them to the guest agent in a host-dialed
// session (push), launches the hypervisor and does both (run), and makes
// manifest signing keys (keygen). See DESIGN.md §7 for the command-line
// contract.
package main

import (
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap/zapcore"

	"github.com/vmcred/vmcred/host/access"
	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/harden"
	"github.com/vmcred/vmcred/shared/logging"
)

// version is stamped by the Makefile with -X main.version=….
var version = "dev"

func main() {
	journald, _ := journal.StderrIsJournalStream()
	log := logging.New(os.Stderr, logging.Config{Journald: journald, Level: zapcore.InfoLevel, Name: "vmcred-host"})
	env := &cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Log: log, Version: version}
	// Before any secret is read: no core dump, no /proc/PID/mem for other
	// processes (shared/harden says why, and why no mlock).
	if err := harden.Apply(); err != nil {
		log.Warn("process hardening: " + err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, "vmcred-host", commands(osDeps()), os.Args[1:], env)
	stop()
	_ = log.Sync() // EINVAL on a pipe or TTY is expected
	os.Exit(code)
}

// deps is what the commands take from the OS beyond cli.Env, injected so
// tests get stable manifests and fake users.
type deps struct {
	// rand supplies manifest nonces and keys.
	rand io.Reader
	// now stamps manifests.
	now func() time.Time
	// source reads $CREDENTIALS_DIRECTORY and names the current user.
	source source.Env
	// lookup finds users and groups for check.
	lookup access.Lookup
	// stdin is the child's stdin in run.
	stdin io.Reader
	// signals, if set, replaces run's own SIGTERM/SIGINT subscription.
	signals <-chan os.Signal
	// proc is where /proc is ("/proc" when empty): push and run record
	// their start time from it, for wait.
	proc string
}

// alive says whether the push or run that recorded a Waiting status
// still runs (readiness.ProcAlive under procRoot).
func (d deps) alive(pid int, start uint64) bool { return readiness.ProcAlive(d.procRoot(), pid, start) }

// procRoot is d.proc or "/proc".
func (d deps) procRoot() string {
	if d.proc == "" {
		return "/proc"
	}
	return d.proc
}

func osDeps() deps {
	return deps{rand: rand.Reader, now: time.Now, source: source.OSEnv(), lookup: access.OSLookup(), stdin: os.Stdin}
}

func commands(d deps) []cli.Command {
	return []cli.Command{
		{Name: "pack", Summary: "plan and write a VM's credentials for its hypervisor; print the arguments to add", Run: d.runPack},
		{Name: "check", Summary: "check that the hypervisor's user can read every credential source", Run: d.runCheck},
		{Name: "run", Summary: "pack, then run the hypervisor with the arguments added, forwarding signals", Run: d.runRun},
		{Name: "keygen", Summary: "make an Ed25519 key pair for signing manifests", Run: d.runKeygen},
		{Name: "push", Summary: "dial a VM's guest agent and send its credentials in a signed session; exit 0 when it reports ready", Run: d.runPush},
		{Name: "serve", Summary: "receive guest PID 1's vmm.notify_socket messages (boot progress, for the log)", Run: d.runServe},
		{Name: "wait", Summary: "wait until a VM's guest reports ready (0), failed (1) or the timeout passes (4)", Run: d.runWait},
	}
}
