package main

import (
	"context"
	"os"

	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
)

// sourceFlags are the flags that choose where firmware credentials are read.
type sourceFlags struct {
	dmiTable, dmiEntries, fwCfg string
}

func (s *sourceFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
}) {
	fs.StringVar(&s.dmiTable, "dmi-table", "", "read SMBIOS from this table file (format of /sys/firmware/dmi/tables/DMI) instead of the live one")
	fs.StringVar(&s.dmiEntries, "dmi-entries", "", "read SMBIOS type 11 from this folder of entries (format of /sys/firmware/dmi/entries)")
	fs.StringVar(&s.fwCfg, "fw-cfg", "", "read fw_cfg credentials from this folder (format of /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials)")
}

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

// read reads the chosen sources.
func (s *sourceFlags) read() (firmware.Report, error) {
	opt, err := s.options()
	if err != nil {
		return firmware.Report{}, err
	}
	rep, err := firmware.Read(os.DirFS("/"), opt)
	if err != nil {
		return rep, cli.WithCode(cli.ExitIO, err)
	}
	return rep, nil
}

func runList(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("list")
	var src sourceFlags
	src.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object (schema in README.md)")
	if err := cli.Parse(env, fs, "vmcred-guest list [--json] [--dmi-table FILE | --dmi-entries DIR] [--fw-cfg DIR]", args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("list takes no arguments")
	}
	rep, err := src.read()
	if err != nil {
		return err
	}
	l := debug.ListFromFirmware(rep, nil)
	if *asJSON {
		return l.WriteJSON(env.Stdout)
	}
	return l.WriteText(env.Stdout)
}
