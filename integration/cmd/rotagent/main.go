// Command rotagent is the benchmark's simulated VM for a rotation
// (integration/bench-rotate.sh): the real agent (guest/agent, as
// `vmcred-guest agent` runs it) listening on a Unix socket, with
// guest/consumers deciding what to restart, over a fake systemd that
// stands for systemd's D-Bus API: one service, consumer.service, uses
// the credential --consumes, and "restarting" it kills its main process
// (a child `sleep`) and starts a new one. It is a test tool, not part of
// vmcred: nothing here talks to a real service manager.
//
//	rotagent --listen PATH --credstore DIR --status-dir DIR --trust-key FILE --vm NAME --consumes NAME
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/pflag"
	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/consumers"
	"github.com/vmcred/vmcred/guest/trustkey"
	"github.com/vmcred/vmcred/shared/address"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rotagent:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := pflag.String("listen", "", "Unix socket path")
	store := pflag.String("credstore", "", "credstore folder (on tmpfs)")
	status := pflag.String("status-dir", "", "status folder")
	trust := pflag.String("trust-key", "", "the host's public key file")
	vm := pflag.String("vm", "", "VM name")
	uses := pflag.String("consumes", "", "the credential consumer.service uses")
	pflag.Parse()
	keys, err := trustkey.Read([]string{*trust})
	if err != nil {
		return err
	}
	sd := &fakeSystemd{uses: *uses}
	if err := sd.start(); err != nil {
		return err
	}
	defer sd.stop()
	// No firmware: an empty root, so the session brings everything.
	empty, err := os.MkdirTemp("", "rotagent-root-")
	if err != nil {
		return err
	}
	defer os.Remove(empty)
	cfg := agent.Config{Root: os.DirFS(empty), Credstore: *store, StatusDir: *status, TrustKeys: keys, VM: *vm, Version: "rotagent"}
	rot := consumers.Rotator{
		Connect: func(context.Context) (consumers.Systemd, func(), error) { return sd, func() {}, nil },
		Options: consumers.Options{Store: *store},
	}
	ag, err := agent.New(cfg, agent.Options{Rotator: rot})
	if err != nil {
		return err
	}
	l, err := agent.Listen(address.Address{Kind: address.Unix, Path: *listen})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return ag.Serve(ctx, l)
}

// fakeSystemd stands for systemd's D-Bus API: one running service whose
// restart replaces a real child process.
type fakeSystemd struct {
	uses string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

func (f *fakeSystemd) start() error {
	f.cmd = exec.Command("sleep", "infinity")
	return f.cmd.Start()
}

func (f *fakeSystemd) stop() {
	if f.cmd != nil && f.cmd.Process != nil {
		f.cmd.Process.Kill()
		f.cmd.Wait()
	}
}

func (f *fakeSystemd) ActiveServices(context.Context) ([]consumers.UnitState, error) {
	return []consumers.UnitState{{Name: "consumer.service", ActiveState: "active", SubState: "running"}}, nil
}

func (f *fakeSystemd) Credentials(context.Context, string) (consumers.UnitCredentials, error) {
	return consumers.UnitCredentials{Load: []consumers.LoadCredential{{ID: f.uses, Path: f.uses}}}, nil
}

func (f *fakeSystemd) Restart(context.Context, string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stop()
	if err := f.start(); err != nil {
		return "failed", err
	}
	return "done", nil
}

func (f *fakeSystemd) Reload(ctx context.Context, u string) (string, error) { return "done", nil }

func (f *fakeSystemd) State(context.Context, string) (consumers.UnitState, error) {
	return consumers.UnitState{Name: "consumer.service", ActiveState: "active", SubState: "running"}, nil
}
