package main

import (
	"context"

	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
)

// runShow prints everything known about one credential, or with --reveal
// its value (the file LoadCredential=NAME would pick) and nothing else.
func (d defaults) runShow(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("show")
	var src sourceFlags
	src.register(fs)
	var pol policyFlags
	pol.register(fs)
	var loc where
	loc.register(fs, d, true, false)
	reveal := fs.Bool("reveal", false, "print the value LoadCredential=NAME would get to stdout, byte for byte, and nothing else")
	asJSON := registerJSON(fs)
	if err := cli.Parse(env, fs, "vmcred-guest show NAME [--reveal] [--json] [flags]", args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return cli.Usagef("show takes one credential name")
	}
	name := fs.Arg(0)
	if err := credential.ValidateName(name); err != nil {
		return cli.Usagef("%v", err)
	}
	if *reveal && *asJSON {
		return cli.Usagef("--reveal prints the raw value and does not combine with --json")
	}
	loc.system = pol.systemCredentials
	if !fs.Changed("system-credentials") {
		loc.system = d.systemCredentials
	}
	in := loc.inspector(d)
	if *reveal {
		_, err := debug.Reveal(in, name, env.Stdout)
		return err
	}
	keys, from, err := d.trust(fs, &pol, loc.root)
	if err != nil {
		return err
	}
	opt, err := src.options()
	if err != nil {
		return err
	}
	rep, rerr := src.readFrom(loc.rootFS(), opt)
	sh, err := debug.Show(in, name, rep, rerr, debug.Policy{TrustKeys: keys, TrustFrom: from, VM: pol.vm, AllowUnverified: pol.allowUnverified})
	return emit(env, *asJSON, sh, err)
}
