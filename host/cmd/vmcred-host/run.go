package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/vmcred/vmcred/host/launch"
	"github.com/vmcred/vmcred/shared/cli"
)

const runUsage = "vmcred-host run --vm NAME --hypervisor qemu|qemu-microvm|cloud-hypervisor|firecracker [pack flags] [--listen ADDR [serve flags]] -- COMMAND [ARGS...]"

// runRun packs, appends the arguments to COMMAND's, runs it with this
// process's stdin, stdout and stderr, forwards SIGTERM and SIGINT, removes
// the payload files when it exits and exits with its status. With
// cloud-hypervisor and --ch-api it also sends vm.create and vm.boot once
// COMMAND's API socket answers.
func (d deps) runRun(ctx context.Context, env *cli.Env, args []string) error {
	var f packFlags
	var sf serveFlags
	fs := cli.NewFlagSet("run")
	f.register(fs)
	sf.register(fs)
	if err := cli.Parse(env, fs, runUsage, args); err != nil {
		return err
	}
	dash, rest := fs.ArgsLenAtDash(), fs.Args()
	switch {
	case dash < 0 || len(rest) == dash:
		return cli.Usagef("run: give the hypervisor command after --: %s", runUsage)
	case dash > 0:
		return cli.Usagef("run: %d unexpected argument(s) before --", dash)
	case f.hypervisor == hvJSON || f.hypervisor == hvDMI:
		return cli.Usagef("run: --hypervisor %s writes a file, it starts nothing; use pack", f.hypervisor)
	}
	command := rest
	if f.chAPI != "" && !hasAPISocket(command[1:], f.chAPI) {
		return cli.Usagef("run: --ch-api %s: the cloud-hypervisor command must listen there: add --api-socket path=%s", f.chAPI, f.chAPI)
	}
	if f.chAPI != "" {
		// vm.create carries every secret: refuse a path someone else could
		// bind first (CHBoot then checks who listens: launch.CHOptions).
		if err := launch.CheckAPISocketPath(f.chAPI); err != nil {
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("run: %w", err))
		}
	}

	// Bind first: the manifest names the channel, and an AF_VSOCK port 0
	// is only known once bound.
	srv, err := bindForRun(&sf, &f)
	if err != nil {
		return err
	}
	defer srv.stop(env)
	pk, err := d.pack(env, &f)
	if err != nil {
		return err
	}
	if err := srv.start(env, d.now, &f, pk); err != nil {
		pk.result.Wipe()
		pk.result.Remove()
		pk.removeTemp()
		return err
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
		// (issue 17, finding 6).
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
	cfg.AfterStart = srv.afterStart(cfg.AfterStart)
	err = launch.Run(ctx, cfg)
	var ee *launch.ExitError
	if errors.As(err, &ee) {
		return cli.WithCode(ee.Code, err)
	}
	if err != nil && !isTagged(err) {
		return cli.WithCode(cli.ExitFailure, fmt.Errorf("run: %w", err))
	}
	return err
}

// handedOver wipes the payloads once the hypervisor has them, and then
// returns the freed heap to the kernel (debug.FreeOSMemory: a GC, then
// MADV_DONTNEED on free pages), so that copies Go made on the way and
// freed without clearing (a slice outgrown, a digest's scratch) are gone
// too, not readable in /proc/PID/mem for the life of the VM.
func handedOver(pk *packed) {
	pk.result.Wipe()
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
