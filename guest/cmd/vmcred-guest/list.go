package main

import (
	"context"
	"io/fs"
	"os"

	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/guest/trustkey"
	"github.com/vmcred/vmcred/shared/cli"
)

// sourceFlags are the flags that choose where firmware credentials are read.
type sourceFlags struct {
	dmiTable, dmiEntries, fwCfg string
}

func (s *sourceFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&s.dmiTable, "dmi-table", "", "read SMBIOS from the table in `FILE` (format of /sys/firmware/dmi/tables/DMI) instead of the live one")
	fs.StringVar(&s.dmiEntries, "dmi-entries", "", "read SMBIOS type 11 from the entries in `DIR` (format of /sys/firmware/dmi/entries)")
	fs.StringVar(&s.fwCfg, "fw-cfg", "", "read fw_cfg credentials from `DIR` (format of opt/io.systemd.credentials in /sys/firmware/qemu_fw_cfg/by_name)")
}

// explicit reports whether any source flag was given.
func (s *sourceFlags) explicit() bool { return s.dmiTable != "" || s.dmiEntries != "" || s.fwCfg != "" }

// options resolves the flags' paths against the working directory, for
// reading through the root file system.
func (s *sourceFlags) options() (firmware.Options, error) {
	var opt firmware.Options
	var err error
	if opt.DMITable, err = rootRelative(s.dmiTable); err != nil {
		return opt, cli.Usagef("--dmi-table: %v", err)
	}
	if opt.DMIEntries, err = rootRelative(s.dmiEntries); err != nil {
		return opt, cli.Usagef("--dmi-entries: %v", err)
	}
	if opt.FwCfg, err = rootRelative(s.fwCfg); err != nil {
		return opt, cli.Usagef("--fw-cfg: %v", err)
	}
	return opt, nil
}

// readFrom reads the sources opt (from options) names, from "/", or when
// no flag names any, the default ones in root. The error is
// firmware.Read's (no source at all), which show and verify survive.
func (s *sourceFlags) readFrom(root fs.FS, opt firmware.Options) (firmware.Report, error) {
	if s.explicit() {
		root = os.DirFS("/")
	}
	return firmware.Read(root, opt)
}

// runList lists this boot's credentials: by default the last load's
// report with the credstore and the search path as they are now; with
// --credstore alone, that folder as `systemd-creds list` would; with
// --dmi-table, --dmi-entries or --fw-cfg, what those sources carry.
func (d defaults) runList(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("list")
	var src sourceFlags
	src.register(fs)
	var loc where
	loc.register(fs, d, true, true)
	// Only --trust-key of the policy flags: list checks the signature of
	// the manifest the agent saved from the host's last session, nothing more.
	var pol policyFlags
	fs.StringArrayVar(&pol.trustKeys, "trust-key", nil, "check the signature of the manifest the agent saved from the host's last session with the public key in `FILE`, or any *.pub key in a folder; repeatable (default: "+d.trustDir+" when it holds any)")
	fs.StringVar(&pol.vm, "vm", "", "check that manifest was issued for the VM `NAME` (default: the name in "+trustkey.DefaultVMNameFile+", as the agent reads it)")
	asJSON := registerJSON(fs)
	noLegend := fs.Bool("no-legend", false, "print only the table's rows: no headings, counts or findings (for scripts)")
	usage := "vmcred-guest list [--json] [--status-dir DIR] [--credstore DIR] [--trust-key FILE|DIR] " +
		"[--dmi-table FILE | --dmi-entries DIR] [--fw-cfg DIR]\n\n" +
		"With no flags: the last load's report (--status-dir) and what LoadCredential= finds now.\n" +
		"With --credstore DIR alone: that folder, as systemd-creds list shows it, with digests.\n" +
		"With --dmi-table, --dmi-entries or --fw-cfg: what those firmware sources carry now.\n" +
		"list does not verify: its VERIFIED column is what the last load found; run vmcred-guest verify to check again now."
	if err := cli.Parse(env, fs, usage, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("list takes no arguments")
	}
	in := loc.inspector(d)
	switch {
	case src.explicit():
		opt, err := src.options()
		if err != nil {
			return err
		}
		rep, err := src.readFrom(loc.rootFS(), opt)
		if err != nil {
			return cli.WithCode(cli.ExitIO, err)
		}
		l := debug.ListFromFirmware(rep, nil)
		return emit(env, d.layout(env, *noLegend), *asJSON, l, l.Unreadable())
	case fs.Changed("credstore") && !fs.Changed("status-dir"):
		l, err := debug.ListCredstore(in, loc.credstore)
		return emit(env, d.layout(env, *noLegend), *asJSON, l, err)
	default:
		keys, from, err := d.trust(fs, &pol, loc.root)
		if err != nil {
			return err
		}
		if from == "" {
			from = d.trustDir
		}
		vm, err := vmName(&pol, loc.root)
		if err != nil {
			return err
		}
		l, err := debug.ListStatus(in, debug.Policy{TrustKeys: keys, TrustFrom: from, VM: vm})
		return emit(env, d.layout(env, *noLegend), *asJSON, l, err)
	}
}
