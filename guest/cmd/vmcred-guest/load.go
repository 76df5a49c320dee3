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
	"github.com/vmcred/vmcred/guest/fetch"
	"github.com/vmcred/vmcred/guest/trustkey"
	"github.com/vmcred/vmcred/shared/address"
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
	fs.StringArrayVar(&p.trustKeys, "trust-key", nil, "require a manifest signed by this public key (a PREFIX.pub file from vmcred-host keygen, or a folder of them); repeatable")
	fs.StringVar(&p.vm, "vm", "", "require the manifest to be issued for this VM name")
	fs.BoolVar(&p.allowUnverified, "allow-unverified", false, "accept credentials without a manifest to verify them against")
	fs.StringVar(&p.systemCredentials, "system-credentials", DefaultSystemCredentials, "compare with what systemd imported here (\"\" to skip)")
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

func runLoad(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("load")
	var src sourceFlags
	src.register(fs)
	var pol policyFlags
	pol.register(fs)
	credstore := fs.String("credstore", agent.DefaultCredstore, "expose credentials in this folder (must be on tmpfs or ramfs)")
	statusDir := fs.String("status-dir", agent.DefaultStatusDir, "write the report (no values) to this folder")
	allowPersistent := fs.Bool("allow-persistent", false, "accept a credstore that is not on tmpfs or ramfs")
	vmFile := fs.String("vm-file", trustkey.DefaultVMNameFile, "without --vm: read this VM's name from `FILE` (one line) when it exists")
	allowAnyVM := fs.Bool("allow-any-vm", false, "with neither --vm nor a --vm-file, accept a manifest issued for any VM (by default load refuses it: a manifest must be bound to its VM)")
	channel := fs.String("channel", "", "dial the host's channel at `ADDR` instead of the address in the manifest (unix:PATH for a simulated VM); without a channel in the manifest nothing is dialed")
	timeout := fs.Duration("timeout", agent.DefaultTimeout, "give the channel fetch, retries included, this `DURATION`; the report to the host then gets its own 10s")
	if err := cli.Parse(env, fs, "vmcred-guest load [flags]", args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("load takes no arguments")
	}
	if *channel != "" {
		if _, err := address.Parse(*channel); err != nil {
			return cli.Usagef("--channel: %v", err)
		}
	}
	if *timeout <= 0 {
		return cli.Usagef("--timeout must be more than 0")
	}
	opt, err := src.options()
	if err != nil {
		return err
	}
	keys, err := pol.keys()
	if err != nil {
		return err
	}
	if pol.vm == "" && *vmFile != "" {
		// The image says which VM it is for (the NixOS module writes it).
		switch name, err := trustkey.ReadVMName(*vmFile); {
		case err == nil:
			pol.vm = name
		case errors.Is(err, os.ErrNotExist) && !fs.Changed("vm-file"):
		case errors.Is(err, trustkey.ErrUnsafe):
			return cli.WithCode(cli.ExitFailure, err)
		default:
			return cli.WithCode(cli.ExitIO, err)
		}
	}
	rep, err := agent.LoadContext(ctx, agent.Config{
		Root:              os.DirFS("/"),
		Firmware:          opt,
		Credstore:         *credstore,
		StatusDir:         *statusDir,
		AllowPersistent:   *allowPersistent,
		AllowUnverified:   pol.allowUnverified,
		TrustKeys:         keys,
		VM:                pol.vm,
		AllowAnyVM:        *allowAnyVM,
		SystemCredentials: pol.systemCredentials,
		Version:           env.Version,
		Channel:           *channel,
		Timeout:           *timeout,
	})
	logReport(env.Log, rep)
	logChannel(env.Log, rep)
	if err != nil {
		// Tell systemd why, so `systemctl status` shows it; the unit then
		// fails and units that Require= it do not start.
		notifySelf(ctx, env, "STATUS="+oneLine("failed: "+err.Error()))
		return err
	}
	env.Log.Info(rep.Summary, logging.String("credstore", rep.Credstore))
	notifySelf(ctx, env, daemon.SdNotifyReady+"\nSTATUS="+oneLine(rep.Summary))
	return nil
}

// notifySelf sends state to the agent's own service manager. A vsock
// $NOTIFY_SOCKET (an agent started outside systemd, e.g. from an
// initramfs, next to PID 1's vmm.notify_socket) goes through fetch.Notify;
// go-systemd's SdNotify would take it for a file name. Failures are
// logged, never fatal.
func notifySelf(ctx context.Context, env *cli.Env, state string) {
	sock := ""
	if env.Getenv != nil {
		sock = env.Getenv("NOTIFY_SOCKET")
	}
	if !fetch.IsVsockNotifySocket(sock) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			env.Log.Warn("sd_notify: " + err.Error())
		}
		return
	}
	ctx, cancel := context.WithTimeout(ctx, fetch.DefaultNotifyTimeout)
	defer cancel()
	if err := fetch.Notify(ctx, sock, []byte(state), nil); err != nil {
		env.Log.Warn("sd_notify: " + err.Error())
	}
}

// logChannel logs what happened on the channel: never a value.
func logChannel(log *logging.Logger, rep agent.Report) {
	ch := rep.Fetch
	if ch == nil {
		return
	}
	switch {
	case ch.Error != "":
		log.Warn("channel: "+ch.Error, logging.String("address", ch.Address), logging.Int("attempts", ch.Attempts))
	default:
		log.Info(fmt.Sprintf("channel: fetched %d credential(s)", len(ch.Received)), logging.String("address", ch.Address), logging.Strings("credentials", ch.Received))
	}
	switch {
	case ch.Acknowledged:
		log.Info("channel: the host acknowledged the report", logging.String("ack", ch.Ack))
	case ch.ReportError != "":
		log.Warn("channel: report not acknowledged: " + ch.ReportError)
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
