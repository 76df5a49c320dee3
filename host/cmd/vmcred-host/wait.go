package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/shared/cli"
)

const waitUsage = "vmcred-host wait --vm NAME [--status-dir DIR] [--timeout DURATION]\n" +
	"\n" +
	"Waits for the report push or run records in DIR/NAME.json. Exit 0: the guest\n" +
	"reported ready; 1: it reported a failure or refused the session, the host could\n" +
	"not serve it (the reason is printed), or the push or run that recorded\n" +
	"\"waiting\" has ended without a report; 3: DIR still does not exist after\n" +
	"--folder-grace (push and run create it as they start: a mistyped --status-dir);\n" +
	"4: the timeout passed; 130: interrupted. A missing NAME.json in an existing DIR\n" +
	"is waited for, as push may not have started yet: a mistyped --vm waits until\n" +
	"--timeout."

// exitInterrupted is wait's exit code when SIGINT or SIGTERM stops it: not
// a timeout (4), as a shell reports a command killed by SIGINT.
const exitInterrupted = 130

// runWait blocks until push (or run) has recorded the guest's report:
// exit 0 when it said ready, 1 when it said failed or when the push or run
// that recorded "waiting" has ended without a report, 3 when the status
// folder is still missing after --folder-grace, 4 on timeout, 130 when
// interrupted. A missing file in an existing folder is waited for: push
// may not have started yet.
func (d deps) runWait(ctx context.Context, env *cli.Env, args []string) error {
	var vm, statusDir string
	var timeout, poll, grace time.Duration
	fs := cli.NewFlagSet("wait")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME` (required)")
	fs.StringVar(&statusDir, "status-dir", readiness.DefaultStatusDir, "read the status push and run write in `DIR`")
	fs.DurationVar(&timeout, "timeout", 5*time.Minute, "give up after `DURATION` (exit 4); 0 waits forever")
	fs.DurationVar(&poll, "poll", readiness.DefaultPoll, "read the status file every `DURATION`")
	fs.DurationVar(&grace, "folder-grace", readiness.DefaultFolderGrace, "fail (exit 3) when the status folder still does not exist after `DURATION`: push and run create it as they start")
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
	if timeout < 0 || poll <= 0 || grace <= 0 {
		return cli.Usagef("--timeout must be 0 or more, --poll and --folder-grace more than 0")
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	st, err := readiness.WaitFor(ctx, statusDir, vm, readiness.WaitOptions{Poll: poll, FolderGrace: grace, Alive: d.alive})
	if err != nil {
		if errors.Is(err, readiness.ErrNoWriter) {
			return cli.WithCode(cli.ExitFailure, err)
		}
		if errors.Is(err, readiness.ErrNoFolder) {
			return cli.WithCode(cli.ExitIO, err)
		}
		if errors.Is(err, context.Canceled) {
			return cli.WithCode(exitInterrupted, fmt.Errorf("vm %s: interrupted before the guest reported (status in %s)", vm, readiness.Path(statusDir, vm)))
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return cli.WithCode(cli.ExitTimeout, fmt.Errorf("vm %s: no report within %v (status in %s)", vm, timeout, readiness.Path(statusDir, vm)))
		}
		return cli.WithCode(cli.ExitTimeout, err)
	}
	if st.State == readiness.Failed {
		// Said once, on stderr (with the exit code): the summary and
		// each failure it does not already name.
		return cli.WithCode(cli.ExitFailure, errors.New(st.Message()))
	}
	fmt.Fprintln(env.Stdout, st.Summary)
	return nil
}
