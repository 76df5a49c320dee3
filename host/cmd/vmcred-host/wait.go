package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/shared/cli"
)

const waitUsage = "vmcred-host wait --vm NAME [--status-dir DIR] [--timeout DURATION]"

// exitInterrupted is wait's exit code when SIGINT or SIGTERM stops it: not
// a timeout (4), as a shell reports a command killed by SIGINT.
const exitInterrupted = 130

// runWait blocks until push (or run) has recorded the guest's report:
// exit 0 when it said ready, 1 when it said failed, 4 on timeout, 130 when
// interrupted. A missing status file or folder is waited for: push and
// run write it only once the guest has reported.
func (d deps) runWait(ctx context.Context, env *cli.Env, args []string) error {
	var vm, statusDir string
	var timeout, poll time.Duration
	fs := cli.NewFlagSet("wait")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME` (required)")
	fs.StringVar(&statusDir, "status-dir", readiness.DefaultStatusDir, "read the status push and run write in `DIR`")
	fs.DurationVar(&timeout, "timeout", 5*time.Minute, "give up after `DURATION` (exit 4); 0 waits forever")
	fs.DurationVar(&poll, "poll", readiness.DefaultPoll, "read the status file every `DURATION`")
	if err := cli.Parse(env, fs, waitUsage, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() == 1 && vm == "":
		vm = fs.Arg(0) // DESIGN §3 writes `vmcred-host wait NAME`
	case fs.NArg() > 0:
		return cli.Usagef("wait takes no arguments besides the VM name")
	}
	if err := checkVMName(vm); err != nil {
		return err
	}
	if timeout < 0 || poll <= 0 {
		return cli.Usagef("--timeout must be 0 or more and --poll more than 0")
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	st, err := readiness.Wait(ctx, statusDir, vm, poll)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return cli.WithCode(exitInterrupted, fmt.Errorf("vm %s: interrupted before the guest reported (status in %s)", vm, readiness.Path(statusDir, vm)))
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return cli.WithCode(cli.ExitTimeout, fmt.Errorf("vm %s: no report within %v (status in %s)", vm, timeout, readiness.Path(statusDir, vm)))
		}
		return cli.WithCode(cli.ExitTimeout, err)
	}
	if st.State == readiness.Failed {
		msg := st.Summary
		if len(st.Failures) > 0 {
			msg += ": " + strings.Join(st.Failures, "; ")
		}
		fmt.Fprintln(env.Stdout, msg)
		return cli.WithCode(cli.ExitFailure, errors.New(msg))
	}
	fmt.Fprintln(env.Stdout, st.Summary)
	return nil
}
