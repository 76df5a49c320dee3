package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/pflag"
	"github.com/vmcred/vmcred/host/push"
	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/logging"
	"github.com/vmcred/vmcred/shared/manifest"
)

const pushUsage = "vmcred-host push --vm NAME --connect ADDR --sign-key FILE [source flags] [--timeout D] [--status-dir DIR]"

// DefaultPushTimeout bounds push (dials and session) when --timeout is not
// given: long enough for a guest to boot.
const DefaultPushTimeout = 2 * time.Minute

// sessionFlags are the flags of the host's session, shared by push and
// run.
type sessionFlags struct {
	connect       string
	statusDir     string
	timeout       time.Duration
	policies      []string
	exitOnFailure bool
}

func (s *sessionFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.connect, "connect", "", "dial the guest agent at `ADDR`: vsock:CID:PORT (QEMU vhost-vsock), hybrid:SOCKETPATH:PORT (the VM's cloud-hypervisor or Firecracker vsock socket), or unix:PATH (a simulated VM); PORT is the agent's privileged port (default 730)")
	fs.StringVar(&s.statusDir, "status-dir", readiness.DefaultStatusDir, "record the guest's report in `DIR`/NAME.json (mode 0600, no values), where vmcred-host wait reads it")
	fs.DurationVar(&s.timeout, "timeout", DefaultPushTimeout, "give up dialing and the session after `DURATION` (exit 4)")
	fs.StringArrayVar(&s.policies, "policy", nil, "`NAME=restart|reload|none`: what the agent does with the units that use credential NAME when its value changes (default restart); repeatable")
}

func (s *sessionFlags) address() (address.Address, error) {
	if s.connect == "" {
		return address.Address{}, cli.Usagef("--connect ADDR is required: the agent's address (vsock:CID:PORT, hybrid:SOCKETPATH:PORT or unix:PATH)")
	}
	a, err := address.Parse(s.connect)
	if err != nil {
		return a, cli.Usagef("--connect: %v", err)
	}
	if err := a.CheckDial(); err != nil {
		return a, cli.Usagef("--connect: %v", err)
	}
	if a.IsVsock() && !a.IsPrivileged() {
		return a, cli.Usagef("--connect %s: port %d is not privileged; the agent listens on a port up to %d (default 730), where only guest root can", a, a.Port, address.PrivilegedPorts)
	}
	return a, nil
}

func (s *sessionFlags) policyMap() (map[string]manifest.Policy, error) {
	m := map[string]manifest.Policy{}
	for _, p := range s.policies {
		name, v, ok := strings.Cut(p, "=")
		if !ok {
			return nil, cli.Usagef("--policy %q: want NAME=restart|reload|none", p)
		}
		if err := credential.ValidateName(name); err != nil {
			return nil, cli.Usagef("--policy: %v", err)
		}
		pol, err := manifest.ParsePolicy(v)
		if err != nil {
			return nil, cli.Usagef("--policy %s: %v", name, err)
		}
		m[name] = pol
	}
	return m, nil
}

func (d deps) runPush(ctx context.Context, env *cli.Env, args []string) error {
	var vm, signKey string
	var sf sessionFlags
	var src source.Flags
	fs := cli.NewFlagSet("push")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME` (required)")
	fs.StringVar(&signKey, "sign-key", "", "sign the session's manifest with the Ed25519 key in `FILE` (required: the agent accepts only a manifest signed by a key it trusts)")
	sf.register(fs)
	src.Register(fs)
	if err := cli.Parse(env, fs, pushUsage, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return cli.Usagef("push takes no arguments")
	case vm == "":
		return cli.Usagef("push: --vm NAME is required")
	case signKey == "":
		return cli.Usagef("push: --sign-key FILE is required: the agent accepts only a signed manifest")
	case sf.timeout <= 0:
		return cli.Usagef("push: --timeout must be more than 0")
	}
	if err := credential.ValidateName(vm); err != nil {
		return cli.Usagef("--vm: %v", err)
	}
	a, err := sf.address()
	if err != nil {
		return err
	}
	policies, err := sf.policyMap()
	if err != nil {
		return err
	}
	specs, err := src.Specs()
	if err != nil {
		return withCode(err)
	}
	key, err := loadKey(signKey)
	if err != nil {
		return d.hostFailed(env, vm, a, &sf, err)
	}
	defer clear(key)
	creds, warnings, err := source.CollectUpTo(specs, d.source, manifest.MaxEntrySize)
	if err != nil {
		return d.hostFailed(env, vm, a, &sf, withCode(err))
	}
	for _, w := range warnings {
		env.Log.Warn(w.String())
	}
	var list []push.Credential
	for _, c := range creds {
		list = append(list, push.Credential{Name: c.Name, Value: c.Value, Delivery: manifest.DeliveryChannel, Static: !c.Secret, Policy: policies[c.Name]})
	}
	defer func() {
		for _, c := range creds {
			c.Value.Wipe()
		}
	}()
	for name := range policies {
		if !hasCredential(list, name) {
			return cli.Usagef("--policy %s: no such credential among the sources", name)
		}
	}
	return d.session(ctx, env, vm, a, &sf, push.Request{VM: vm, Key: key, IssuedAt: d.now(), Credentials: list})
}

func hasCredential(list []push.Credential, name string) bool {
	for _, c := range list {
		if c.Name == name {
			return true
		}
	}
	return false
}

// hostFailed records that push could not serve the session at all (a
// source or the signing key could not be read), so that wait says why at
// once instead of waiting for a push that ended; it returns err.
func (d deps) hostFailed(env *cli.Env, vm string, a address.Address, sf *sessionFlags, err error) error {
	if readiness.CheckDirIfExists(sf.statusDir) != nil {
		return err
	}
	msg := fmt.Sprintf("vm %s: push could not start the session: %v", vm, err)
	if werr := readiness.Write(sf.statusDir, readiness.HostFailed(vm, a.String(), d.now(), msg)); werr != nil {
		env.Log.Warn(werr.Error())
	}
	return err
}

// errNoReport marks a session that ended without the guest's report.
var errNoReport = errors.New("no report")

// session dials the agent, runs one session, records the report in the
// status folder and tells the host's own service manager: exit 0 when the
// guest reported ready, 1 when it refused or failed, 4 on timeout, 3 when
// the status could not be written.
func (d deps) session(ctx context.Context, env *cli.Env, vm string, a address.Address, sf *sessionFlags, req push.Request) error {
	log := env.Log.With(logging.String("vm", vm))
	if err := readiness.CheckDirIfExists(sf.statusDir); err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	// Recorded before the first dial: wait then knows a session is under
	// way, and, from the PID and its start time, when this process has
	// ended without a report.
	started := readiness.Started(vm, a.String(), d.now(), os.Getpid(), d.procRoot())
	if prev, err := readiness.Read(sf.statusDir, vm); err == nil {
		// The generation the guest last reported holding stays known.
		started.Generation = prev.Generation
	}
	if err := readiness.Write(sf.statusDir, started); err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	log.Info(fmt.Sprintf("dialing the agent at %s", a))
	out, err := push.Push(ctx, push.Config{Address: a, Request: req})
	if err != nil {
		code := cli.ExitFailure
		if errors.Is(err, context.DeadlineExceeded) {
			code = cli.ExitTimeout
		}
		err = fmt.Errorf("vm %s: %w from the agent at %s: %w", vm, errNoReport, a, err)
		// wait reports this at once, rather than a dead writer.
		if werr := readiness.Write(sf.statusDir, readiness.HostFailed(vm, a.String(), d.now(), err.Error())); werr != nil {
			log.Warn(werr.Error())
		}
		return cli.WithCode(code, err)
	}
	st := readiness.FromReport(vm, out.Report, d.now())
	st.Connect, st.PID = a.String(), os.Getpid()
	st.Session = &readiness.Session{At: d.now().UTC(), Attempts: out.Attempts, BootID: clip(out.Challenge.BootID), Credentials: out.Sent, Bytes: out.Bytes, Acked: out.Acked}
	if st.Session.Credentials == nil {
		st.Session.Credentials = []string{}
	}
	werr := readiness.Write(sf.statusDir, st)
	_, _ = daemon.SdNotify(false, "STATUS="+st.StatusLine())
	if out.Report.Outcome == proto.OutcomeReady {
		log.Info(st.Summary, logging.String("agent", clip(out.Report.AgentVersion)), logging.String("session", describeSession(out.Result)), logging.Int("attempts", out.Attempts))
		if werr != nil {
			return cli.WithCode(cli.ExitIO, werr)
		}
		fmt.Fprintln(env.Stdout, st.Summary)
		return nil
	}
	if werr != nil {
		log.Warn(werr.Error())
	}
	// Said once: the summary and each failure it does not already name
	// (the status file has them all).
	return cli.WithCode(cli.ExitFailure, errors.New(st.Message()))
}

// clip keeps agent-supplied text short for log fields (it is printable
// ASCII already: the protocol checks it).
func clip(s string) string {
	if len(s) > 128 {
		return s[:128]
	}
	return s
}
