package main

import (
	"context"

	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/cli"
)

// runVerify re-verifies the live sources, the credstore, systemd's copies
// and what LoadCredential= picks against the manifest (the firmware's, or
// the copy the last load saved when firmware holds none), writing nothing.
// Exit 0 when all is well, 1 on a verification failure, 3 when something
// could not be read.
func (d defaults) runVerify(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("verify")
	var src sourceFlags
	src.register(fs)
	var pol policyFlags
	pol.register(fs)
	var loc where
	loc.register(fs, d, false, false)
	fs.StringVar(&loc.statusDir, "status-dir", d.statusDir, "read the manifest the agent saved from the host's last session from `DIR`, used when firmware holds none")
	anyVM := registerAnyVM(fs)
	asJSON := registerJSON(fs)
	if err := cli.Parse(env, fs, "vmcred-guest verify [--json] [source and policy flags as for load]\n\nExit codes: 0 verified, 1 verification failure, 3 unreadable.", args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("verify takes no arguments")
	}
	loc.system = pol.systemCredentials
	if !fs.Changed("system-credentials") {
		loc.system = d.systemCredentials
	}
	keys, from, err := d.trust(fs, &pol, loc.root)
	if err != nil {
		return err
	}
	vm, err := vmName(&pol, loc.root)
	if err != nil {
		return err
	}
	opt, err := src.options()
	if err != nil {
		return err
	}
	rep, rerr := src.readFrom(loc.rootFS(), opt)
	v, err := debug.Verify(loc.inspector(d), rep, rerr, debug.Policy{TrustKeys: keys, TrustFrom: from, VM: vm, AllowAnyVM: *anyVM, AllowUnverified: pol.allowUnverified})
	return emit(env, d.layout(env, false), *asJSON, v, err)
}
