package main

import (
	"context"

	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/cli"
)

// runStatus prints the last load's report. Exit 0 when it was ready, 1
// when it failed, 3 when there is no readable status file.
func (d defaults) runStatus(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("status")
	var loc where
	loc.registerRoot(fs, d)
	fs.StringVar(&loc.statusDir, "status-dir", d.statusDir, "read the last load's report (status.json) from `DIR`")
	asJSON := registerJSON(fs)
	if err := cli.Parse(env, fs, "vmcred-guest status [--status-dir DIR] [--json]\n\nExit codes: 0 the last load was ready, 1 it failed, 3 no readable status file.", args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("status takes no arguments")
	}
	loc.credstore, loc.system = d.credstore, d.systemCredentials
	st, err := debug.ReadStatus(loc.inspector(d), d.trustDir)
	return emit(env, d.layout(env, false), *asJSON, st, err)
}
