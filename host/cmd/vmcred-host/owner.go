package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmcred/vmcred/host/access"
	"github.com/vmcred/vmcred/host/emit"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/cli"
)

// handOver gives the payload files, and the runtime directory when pack
// made it, to the user --owner names: pack run as root by hand otherwise
// leaves root:root 0400 files that a hypervisor running as that user
// cannot open. Modes stay 0400 (files) and 0700 (directory).
func (d deps) handOver(owner string, res *emit.Result, madeDir bool) error {
	u, err := d.lookup.User(owner)
	if err != nil {
		return cli.Usagef("--owner %s: %v", owner, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return cli.Usagef("--owner %s: %v", owner, err)
	}
	var paths []string
	if madeDir && res.RuntimeDir != "" {
		paths = append(paths, res.RuntimeDir)
	}
	for _, f := range res.Files {
		paths = append(paths, f.Path)
	}
	for _, p := range paths {
		if err := os.Lchown(p, uid, gid); err != nil {
			return cli.WithCode(cli.ExitIO, fmt.Errorf("--owner %s: %w (only root may give files to another user)", owner, err))
		}
	}
	return nil
}

// warnUnreadable warns when the user the payload files are for (--owner,
// else the user vmcred-host check tests by default) cannot read them: the
// hypervisor would fail with "Permission denied". It says nothing when
// that user does not exist here (a hypervisor run by hand, as root).
func (d deps) warnUnreadable(env *cli.Env, owner string, res *emit.Result) {
	who := owner
	if who == "" {
		who = access.DefaultUser
	}
	var items []source.Item
	for _, f := range res.Files {
		items = append(items, source.Item{Name: filepath.Base(f.Path), Secret: true, Origin: source.Origin{Kind: source.File, Path: f.Path}})
	}
	if len(items) == 0 {
		return
	}
	rep, err := access.Diagnose(items, access.Config{User: who, Lookup: d.lookup})
	if err != nil {
		return // no such user here
	}
	var bad []string
	for _, r := range rep.Results {
		if !r.Readable {
			bad = append(bad, r.Path)
		}
	}
	if len(bad) == 0 {
		return
	}
	fix := "pass --owner " + who + " (pack must run as root to give them away), or run pack as " + who
	if owner != "" {
		fix = "a folder on the way is closed to " + who + ": see vmcred-host check --as-user " + who
	}
	env.Log.Warn(fmt.Sprintf("%s cannot read %d of %s pack wrote (%s): a hypervisor running as %s gets \"Permission denied\"; %s",
		who, len(bad), cli.Count(len(rep.Results), "payload file"), strings.Join(bad, ", "), who, fix))
}
