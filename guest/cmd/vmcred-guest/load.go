package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/guest/trustkey"
	"github.com/vmcred/vmcred/guest/vsocknotify"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
)

// DefaultSystemCredentials is where systemd's PID 1 imports credentials.
const DefaultSystemCredentials = "/run/credentials/@system"

// policyFlags are the verification flags load and verify share.
type policyFlags struct {
	trustKeys         []string
	vm                string
	allowUnverified   bool
	systemCredentials string
}

func (p *policyFlags) register(fs interface {
	StringArrayVar(p *[]string, name string, value []string, usage string)
	StringVar(p *string, name, value, usage string)
	BoolVar(p *bool, name string, value bool, usage string)
}) {
	fs.StringArrayVar(&p.trustKeys, "trust-key", nil, "require a manifest signed by the public key in `FILE` (a PREFIX.pub from vmcred-host keygen), or by any *.pub key in a folder; repeatable")
	fs.StringVar(&p.vm, "vm", "", "require the manifest to be issued for the VM `NAME`")
	fs.BoolVar(&p.allowUnverified, "allow-unverified", false, "accept credentials without a manifest to verify them against")
	fs.StringVar(&p.systemCredentials, "system-credentials", DefaultSystemCredentials, "compare with what systemd imported in `DIR` (\"\" to skip)")
}

// keys reads the trusted public keys: each flag names a key file or a
// folder whose *.pub files are all trusted. A key file or folder another
// user could write is refused (exit 1), as pack refuses a signing key
// others can read: see guest/trustkey.
func (p *policyFlags) keys() ([]ed25519.PublicKey, error) {
	keys, err := trustkey.Read(p.trustKeys)
	var pe *trustkey.ParseError
	switch {
	case err == nil:
		return keys, nil
	case errors.Is(err, trustkey.ErrUnsafe):
		return nil, cli.WithCode(cli.ExitFailure, err)
	case errors.As(err, &pe):
		return nil, cli.WithCode(cli.ExitUsage, err)
	}
	return nil, cli.WithCode(cli.ExitIO, err)
}

// storeFlags are the flags load and agent share about where results go,
// and which VM this is.
type storeFlags struct {
	credstore, statusDir string
	allowPersistent      bool
	vmFile               string
	allowAnyVM           bool
}

func (s *storeFlags) register(fs interface {
	StringVar(p *string, name, value, usage string)
	BoolVar(p *bool, name string, value bool, usage string)
}) {
	fs.StringVar(&s.credstore, "credstore", agent.DefaultCredstore, "expose credentials in `DIR` (must be on tmpfs or ramfs)")
	fs.StringVar(&s.statusDir, "status-dir", agent.DefaultStatusDir, "write the report (no values) to `DIR`")
	fs.BoolVar(&s.allowPersistent, "allow-persistent", false, "accept a credstore that is not on tmpfs or ramfs")
}

// registerVM adds --vm-file and, for load, --allow-any-vm (the agent
// always needs its VM's name: every session manifest is bound to it).
func (s *storeFlags) registerVM(fs interface {
	StringVar(p *string, name, value, usage string)
	BoolVar(p *bool, name string, value bool, usage string)
}, allowAny bool) {
	fs.StringVar(&s.vmFile, "vm-file", trustkey.DefaultVMNameFile, "without --vm: read this VM's name from `FILE` (one line) when it exists")
	if allowAny {
		fs.BoolVar(&s.allowAnyVM, "allow-any-vm", false, "with neither --vm nor a --vm-file, accept a manifest issued for any VM (by default load refuses it: a manifest must be bound to its VM)")
	}
}

// config builds the agent's Config from the shared flags. Without --vm,
// the VM's name comes from --vm-file when it exists (the NixOS module
// writes it).
func config(env *cli.Env, fs interface{ Changed(string) bool }, src *sourceFlags, pol *policyFlags, st *storeFlags) (agent.Config, error) {
	opt, err := src.options()
	if err != nil {
		return agent.Config{}, err
	}
	keys, err := pol.keys()
	if err != nil {
		return agent.Config{}, err
	}
	if pol.vm == "" && st.vmFile != "" {
		switch name, err := trustkey.ReadVMName(st.vmFile); {
		case err == nil:
			pol.vm = name
		case errors.Is(err, os.ErrNotExist) && !fs.Changed("vm-file"):
		case errors.Is(err, trustkey.ErrUnsafe):
			return agent.Config{}, cli.WithCode(cli.ExitFailure, err)
		default:
			return agent.Config{}, cli.WithCode(cli.ExitIO, err)
		}
	}
	return agent.Config{
		Root:              os.DirFS("/"),
		Firmware:          opt,
		Credstore:         st.credstore,
		StatusDir:         st.statusDir,
		AllowPersistent:   st.allowPersistent,
		AllowUnverified:   pol.allowUnverified,
		TrustKeys:         keys,
		VM:                pol.vm,
		AllowAnyVM:        st.allowAnyVM,
		SystemCredentials: pol.systemCredentials,
		Version:           env.Version,
	}, nil
}

func runLoad(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("load")
	var src sourceFlags
	src.register(fs)
	var pol policyFlags
	pol.register(fs)
	var st storeFlags
	st.register(fs)
	st.registerVM(fs, true)
	if err := cli.Parse(env, fs, "vmcred-guest load [flags]", args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("load takes no arguments")
	}
	cfg, err := config(env, fs, &src, &pol, &st)
	if err != nil {
		return err
	}
	rep, err := agent.LoadContext(ctx, cfg)
	logReport(env.Log, rep)
	if err != nil {
		// Tell systemd why, so `systemctl status` shows it; the unit then
		// fails and units that Require= it do not start.
		notifySelf(ctx, env, "STATUS="+oneLine("failed: "+err.Error()))
		return err
	}
	if rep.SignedBy != "" {
		env.Log.Warn(fmt.Sprintf("the manifest is signed by ed25519 key %s, but no --trust-key was given, so the signature was not checked, only the digests; "+
			"to require it, pass --trust-key with the host's PREFIX.pub (or a folder of them, e.g. %s)", rep.SignedBy, debug.DefaultTrustDir))
	}
	env.Log.Info(rep.Summary, logging.String("credstore", rep.Credstore))
	notifySelf(ctx, env, daemon.SdNotifyReady+"\nSTATUS="+oneLine(rep.Summary))
	return nil
}

// notifySelf sends state to the agent's own service manager. A vsock
// $NOTIFY_SOCKET (an agent started outside systemd, e.g. from an
// initramfs, next to PID 1's vmm.notify_socket) goes through vsocknotify;
// go-systemd's SdNotify would take it for a file name. Failures are
// logged, never fatal.
func notifySelf(ctx context.Context, env *cli.Env, state string) {
	sock := ""
	if env.Getenv != nil {
		sock = env.Getenv("NOTIFY_SOCKET")
	}
	if !vsocknotify.IsVsockNotifySocket(sock) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			env.Log.Warn("sd_notify: " + err.Error())
		}
		return
	}
	ctx, cancel := context.WithTimeout(ctx, vsocknotify.DefaultNotifyTimeout)
	defer cancel()
	if err := vsocknotify.Notify(ctx, sock, []byte(state), nil); err != nil {
		env.Log.Warn("sd_notify: " + err.Error())
	}
}

// logSession logs what happened in a host session: never a value.
func logSession(log *logging.Logger, rep agent.Report) {
	ch := rep.Fetch
	if ch == nil {
		return
	}
	switch {
	case ch.Error != "":
		log.Warn("session: "+ch.Error, logging.String("peer", ch.Address))
	default:
		log.Info("session: received "+cli.Count(len(ch.Received), "credential"), logging.String("peer", ch.Address), logging.Strings("credentials", ch.Received))
	}
	switch {
	case ch.Acknowledged:
		log.Info("session: the host acknowledged the report", logging.String("ack", ch.Ack))
	case ch.ReportError != "":
		log.Warn("session: report not acknowledged: " + ch.ReportError)
	}
}

// logReport logs what a person should see about a load: notes, skipped
// strings and the systemd cross-check. Never a value.
func logReport(log *logging.Logger, rep agent.Report) {
	for _, s := range rep.Sources {
		for _, n := range s.Notes {
			log.Warn(n)
		}
	}
	for _, s := range rep.Skipped {
		if s.Count > 0 {
			// The strings past the first oemstring.MaxSkipped: one line
			// per reason, not one per string.
			log.Warn(fmt.Sprintf("skipped %d more OEM strings, not named", s.Count), logging.String("reason", s.Reason))
			continue
		}
		log.Warn("skipped OEM string", logging.Int("index", s.Index), logging.String("source", s.Source), logging.String("name", s.Name), logging.String("reason", s.Reason))
	}
	for _, c := range rep.Credentials {
		if c.Problem != "" && c.Verification == "not-in-manifest" {
			log.Warn("credential not in the manifest, not exposed", logging.String("credential", c.Name))
		}
	}
	for _, n := range rep.SystemCheck {
		if n.Status == "match" {
			continue
		}
		l := log.Warn
		switch {
		case n.Fatal:
			l = log.Error
		case n.Status == "skipped":
			l = log.Info
		}
		if n.Name == "" {
			l("systemd cross-check: " + n.Advice)
			continue
		}
		l("systemd cross-check: "+n.Advice, logging.String("credential", n.Name), logging.String("status", n.Status))
	}
}

// oneLine keeps a STATUS= value on one line, as sd_notify requires.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 1000 {
		s = s[:999] + "…"
	}
	return s
}
