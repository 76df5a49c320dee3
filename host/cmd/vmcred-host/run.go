package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"

	"github.com/vmcred/vmcred/host/launch"
	"github.com/vmcred/vmcred/host/push"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/harden"
	"github.com/vmcred/vmcred/shared/manifest"
)

const runUsage = "vmcred-host run --vm NAME --hypervisor qemu|qemu-microvm|cloud-hypervisor|firecracker --connect ADDR --sign-key FILE [pack flags] [--timeout D] [--exit-on-failure] -- COMMAND [ARGS...]"

// runRun packs, appends the arguments to COMMAND's, runs it with this
// process's stdin, stdout and stderr, forwards SIGTERM and SIGINT, removes
// the payload files when it exits and exits with its status. Once COMMAND
// runs it dials the guest agent at --connect (retrying while the guest
// boots) and runs the session push runs: the manifest over the agent's
// challenge, the values that go by channel, and the report, which it
// records for `wait`. With cloud-hypervisor and --ch-api it first sends
// vm.create and vm.boot once COMMAND's API socket answers.
func (d deps) runRun(ctx context.Context, env *cli.Env, args []string) error {
	var f packFlags
	var sf sessionFlags
	fs := cli.NewFlagSet("run")
	f.register(fs, true)
	sf.register(fs)
	fs.BoolVar(&sf.exitOnFailure, "exit-on-failure", false, "stop the hypervisor (exit 1) when the guest reports a failed load or no report comes within --timeout")
	if err := cli.Parse(env, fs, runUsage, args); err != nil {
		return err
	}
	dash, rest := fs.ArgsLenAtDash(), fs.Args()
	switch {
	case dash < 0 || len(rest) == dash:
		return cli.Usagef("give the hypervisor command after --: %s", runUsage)
	case dash == 1:
		return cli.Usagef("an unexpected argument before --")
	case dash > 1:
		return cli.Usagef("%d unexpected arguments before --", dash)
	case f.hypervisor == hvJSON || f.hypervisor == hvDMI:
		return cli.Usagef("--hypervisor %s writes a file, it starts nothing; use pack", f.hypervisor)
	}
	command := rest
	if f.chAPI != "" && !hasAPISocket(command[1:], f.chAPI) {
		return cli.Usagef("--ch-api %s: the cloud-hypervisor command must listen there: add --api-socket path=%s", f.chAPI, f.chAPI)
	}
	if f.chAPI != "" {
		// vm.create carries every secret: refuse a path someone else could
		// bind first (CHBoot then checks who listens: launch.CHOptions).
		if err := launch.CheckAPISocketPath(f.chAPI); err != nil {
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("run: %w", err))
		}
	}
	// Without --connect, run only launches: no session, so nothing goes
	// by channel and no readiness is recorded.
	withSession := sf.connect != ""
	var a address.Address
	var key ed25519.PrivateKey
	policies := map[string]manifest.Policy{}
	if withSession {
		var err error
		if a, err = sf.address(); err != nil {
			return err
		}
		if f.signKey == "" {
			return cli.Usagef("run: --connect needs --sign-key FILE: the agent accepts only a session manifest signed by a key it trusts")
		}
		if sf.timeout <= 0 {
			return cli.Usagef("run: --timeout must be more than 0")
		}
		if policies, err = sf.policyMap(); err != nil {
			return err
		}
		if key, err = loadKey(f.signKey); err != nil {
			return err
		}
		defer clear(key)
	} else if sf.exitOnFailure || len(sf.policies) > 0 {
		return cli.Usagef("run: --exit-on-failure and --policy need --connect ADDR (the session)")
	}

	f.sessionValues = withSession
	// The values are read, copied and wiped on this thread only, so that
	// harden.Scrub (in handedOver) reaches the registers and the signal
	// stack they passed through.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pk, err := d.pack(env, &f)
	if err != nil {
		return err
	}
	defer pk.wipeSession()
	if !withSession && pk.sessionCount() > 0 {
		pk.result.Wipe()
		pk.result.Remove()
		pk.removeTemp()
		return cli.Usagef("%s in the host's session (not in firmware); give --connect ADDR and --sign-key FILE", countGo(pk.sessionCount()))
	}
	if !withSession {
		// No session: run keeps no copy of the values for it.
		pk.wipeSession()
	}
	for i := range pk.session {
		pk.session[i].Policy = policies[pk.session[i].Name]
	}
	defer func() {
		pk.result.Wipe()
		if err := pk.result.Remove(); err != nil {
			env.Log.Warn("remove payload files: " + err.Error())
		}
		pk.removeTemp()
	}()

	if pk.result.API == nil {
		// The payload files are written and the hypervisor reads them, not
		// this process's memory: keep no copy for the life of the VM
		// (issue 17, finding 6). The session's values stay until the
		// session has sent them (afterStartSession wipes them).
		handedOver(pk)
	}
	cfg := launch.Config{
		Path:    command[0],
		Args:    append(append([]string(nil), command[1:]...), pk.result.Args...),
		Stdin:   d.stdin,
		Stdout:  env.Stdout,
		Stderr:  env.Stderr,
		Signals: d.signals,
	}
	if api := pk.result.API; api != nil {
		cfg.AfterStart = func(ctx context.Context, exited <-chan struct{}) error {
			if err := launch.CHBoot(ctx, api.Socket, pk.result.APIBody(), exited, 0); err != nil {
				return cli.WithCode(cli.ExitFailure, err)
			}
			// Handed over: wipe the body and every payload now, not when
			// the VM stops.
			handedOver(pk)
			// cloud-hypervisor has the strings now; the body file is not
			// needed any more.
			if err := os.Remove(api.BodyFile); err != nil {
				env.Log.Warn("remove api request body: " + err.Error())
			}
			env.Log.Info("cloud-hypervisor: vm.create and vm.boot done")
			return nil
		}
	}
	boot := cfg.AfterStart
	req := push.Request{VM: f.vm, Key: key, IssuedAt: d.now(), Credentials: pk.session}
	cfg.AfterStart = boot
	var reported atomic.Bool
	if withSession {
		cfg.AfterStart = d.afterStartSession(env, &f, &sf, a, boot, req, pk, &reported)
	}
	err = launch.Run(ctx, cfg)
	if err == nil && withSession && !reported.Load() {
		env.Log.Warn(fmt.Sprintf("vm %s: the hypervisor exited 0 but the guest never reported; run exits 0, the hypervisor's status", f.vm))
	}
	var ee *launch.ExitError
	if errors.As(err, &ee) {
		return cli.WithCode(ee.Code, err)
	}
	if code, ok := startFailure(err); ok {
		return cli.WithCode(code, err)
	}
	if err != nil && !isTagged(err) {
		return cli.WithCode(cli.ExitFailure, err)
	}
	return err
}

// Exit codes of a hypervisor command that could not be started, as a
// shell (and env, nohup, timeout) gives them.
const (
	exitNotExecutable = 126
	exitNotFound      = 127
)

// startFailure gives the exit code for a hypervisor command that did not
// start: 127 when it does not exist, 126 when it cannot be executed.
func startFailure(err error) (int, bool) {
	var pe *fs.PathError
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return exitNotFound, true
	case !errors.As(err, &pe) || pe.Op != "fork/exec":
		return 0, false
	case errors.Is(err, fs.ErrNotExist):
		return exitNotFound, true
	}
	return exitNotExecutable, true
}

// countGo is "1 credential goes" or "N credentials go".
func countGo(n int) string {
	if n == 1 {
		return "1 credential goes"
	}
	return cli.Count(n, "credential") + " go"
}

// afterStartSession is run's AfterStart with a session: the API boot (if
// any), then the session, bounded by --timeout and by the hypervisor's
// life.
// reported is set when the session ended with the guest's report.
func (d deps) afterStartSession(env *cli.Env, f *packFlags, sf *sessionFlags, a address.Address, boot func(context.Context, <-chan struct{}) error, req push.Request, pk *packed, reported *atomic.Bool) func(context.Context, <-chan struct{}) error {
	return func(ctx context.Context, exited <-chan struct{}) error {
		if boot != nil {
			if err := boot(ctx, exited); err != nil {
				return err
			}
		}
		// The session ends when the hypervisor does: nothing to dial then.
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-exited:
				cancel()
			case <-sctx.Done():
			}
		}()
		err := d.session(sctx, env, f.vm, a, sf, req)
		reported.Store(!errors.Is(err, errNoReport))
		pk.wipeSession()
		harden.Scrub()
		debug.FreeOSMemory()
		if err != nil {
			if sf.exitOnFailure {
				return fmt.Errorf("%w; stopping the hypervisor (--exit-on-failure)", err)
			}
			env.Log.Error(err.Error())
		}
		return nil
	}
}

// handedOver wipes the payloads once the hypervisor has them, and then
// returns the freed heap to the kernel (debug.FreeOSMemory: a GC, then
// MADV_DONTNEED on free pages), so that copies Go made on the way and
// freed without clearing (a slice outgrown, a digest's scratch) are gone
// too, not readable in /proc/PID/mem for the life of the VM.
func handedOver(pk *packed) {
	pk.result.Wipe()
	harden.Scrub()
	debug.FreeOSMemory()
}

func isTagged(err error) bool {
	var ce *cli.ExitError
	return errors.As(err, &ce)
}

// hasAPISocket reports whether cloud-hypervisor's arguments contain
// --api-socket for socket, in any of its forms: "--api-socket X" or
// "--api-socket=X", with X "path=SOCKET" or "SOCKET" (possibly with more
// comma-separated keys).
func hasAPISocket(args []string, socket string) bool {
	matches := func(v string) bool {
		for kv := range strings.SplitSeq(v, ",") {
			if kv == socket || kv == "path="+socket {
				return true
			}
		}
		return false
	}
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--api-socket="); ok && matches(v) {
			return true
		}
		if a == "--api-socket" && i+1 < len(args) && matches(args[i+1]) {
			return true
		}
	}
	return false
}
