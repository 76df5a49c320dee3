// Command vmcred-guest is vmcred's guest agent: the boot service that reads
// the credentials the host passed through firmware or a host-dialed
// session, verifies them, and exposes them as systemd credentials; and the
// debug command an
// operator runs inside the VM (list, show, verify, status).
package main

import (
	"os"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/harden"
	"github.com/vmcred/vmcred/shared/logging"
	"go.uber.org/zap/zapcore"
)

// version is stamped by the Makefile with -X main.version=….
var version = "dev"

func main() {
	journald, _ := journal.StderrIsJournalStream()
	log := logging.New(os.Stderr, logging.Config{Journald: journald, Level: zapcore.InfoLevel, Name: "vmcred-guest"})
	env := &cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Log: log, Version: version}
	// Before any secret is read: no core dump, no /proc/PID/mem for other
	// processes (shared/harden says why, and why no mlock).
	if err := harden.Apply(); err != nil {
		log.Warn("process hardening: " + err.Error())
	}
	ctx, stop := newLazySignalContext(os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, "vmcred-guest", commands(), os.Args[1:], env)
	stop()
	_ = log.Sync() // EINVAL on a pipe or TTY is expected
	os.Exit(code)
}

func commands() []cli.Command { return productionDefaults().commands() }

func (d defaults) commands() []cli.Command {
	return []cli.Command{
		{Name: "agent", Summary: "the boot service: load firmware credentials, accept the host's sessions on a privileged vsock port, expose and report", Run: runAgent},
		{Name: "load", Summary: "read, verify and expose the credentials firmware carries, once", Run: runLoad},
		{Name: "list", Summary: "list credentials: name, source, size, digest, verification, where served", Run: d.runList},
		{Name: "show", Summary: "everything about one credential (its value only with --reveal)", Run: d.runShow},
		{Name: "verify", Summary: "re-verify the firmware, the credstore and systemd's copies now", Run: d.runVerify},
		{Name: "status", Summary: "the last load's report", Run: d.runStatus},
	}
}
