package main

import (
	"context"
	"fmt"

	"github.com/vmcred/vmcred/host/access"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/cli"
)

const checkUsage = "vmcred-host check [source flags] [--as-user USER] [--vm NAME] [--json]"

// runCheck is the permission doctor: can the hypervisor's user read every
// source? It reads no value. Exit 0 only if every file is readable, 3 if
// not (a source the hypervisor could not read).
func (d deps) runCheck(_ context.Context, env *cli.Env, args []string) error {
	var src source.Flags
	var asUser, vm string
	var asJSON bool
	fs := cli.NewFlagSet("check")
	src.Register(fs)
	fs.StringVar(&asUser, "as-user", access.DefaultUser, "the `USER` the hypervisor runs as")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME`, for the systemd drop-in in the fix")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	if err := cli.Parse(env, fs, checkUsage, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %d of %d bytes (flags only; see --help)", 1, len(fs.Arg(0)))
	}
	specs, err := src.Specs()
	if err != nil {
		return withCode(err)
	}
	if len(specs) == 0 {
		return cli.Usagef("give the credential sources to check (--cred, --cred-dir, --from-credentials-directory)")
	}
	items, warnings, err := source.Check(specs, d.source)
	if err != nil {
		return withCode(err)
	}
	for _, w := range warnings {
		env.Log.Warn(w.String())
	}
	rep, err := access.Diagnose(items, access.Config{User: asUser, VM: vm, Lookup: d.lookup})
	if err != nil {
		return cli.WithCode(cli.ExitUsage, fmt.Errorf("check --as-user %s: %w", asUser, err))
	}
	if asJSON {
		err = rep.WriteJSON(env.Stdout)
	} else {
		err = rep.WriteText(env.Stdout)
	}
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	if !rep.OK() {
		n := 0
		for _, r := range rep.Results {
			if !r.Readable {
				n++
			}
		}
		return cli.WithCode(cli.ExitIO, fmt.Errorf("%s cannot read %d of %s (see the report for the fix)", rep.User, n, cli.Count(len(rep.Results), "credential")))
	}
	return nil
}
