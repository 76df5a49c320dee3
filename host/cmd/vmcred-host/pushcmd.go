package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

const pushUsage = "vmcred-host push --vm NAME --connect ADDR --sign-key FILE [source flags] [--timeout D] [--status-dir DIR] [--state-dir DIR] [--dry-run]"

// DefaultPushTimeout bounds push (dials and session) when --timeout is not
// given: long enough for a guest to boot.
const DefaultPushTimeout = 2 * time.Minute

// sessionFlags are the flags of the host's session, shared by push and
// run.
type sessionFlags struct {
	connect       string
	statusDir     string
	stateDir      string
	timeout       time.Duration
	policies      []string
	exitOnFailure bool
}

func (s *sessionFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.connect, "connect", "", "dial the guest agent at `ADDR`: vsock:CID:PORT (QEMU vhost-vsock), hybrid:SOCKETPATH:PORT (the VM's cloud-hypervisor or Firecracker vsock socket), or unix:PATH (a simulated VM); PORT is the agent's privileged port (default 730)")
	fs.StringVar(&s.statusDir, "status-dir", readiness.DefaultStatusDir, "record the guest's report in `DIR`/NAME.json (mode 0600, no values), where vmcred-host wait reads it")
	fs.StringVar(&s.stateDir, "state-dir", "", "keep the generation last pushed to each VM, with the names, sizes and keyed MACs (never values or digests) of its credentials, in `DIR`/NAME.json (folder 0700, files 0600; default: STATUS-DIR/pushed); after a lost state folder the next push starts above the generation the agent reports")
	fs.DurationVar(&s.timeout, "timeout", DefaultPushTimeout, "give up after `DURATION` (exit 4): dialing, the session, and the guest's restarts of the services that use a changed credential (the agent is told what is left)")
	fs.StringArrayVar(&s.policies, "policy", nil, "`NAME=restart|reload|none`: what the agent does with the units that use credential NAME when its value changes (default restart); repeatable")
}

// state is the push state folder: --state-dir, or STATUS-DIR/pushed.
func (s *sessionFlags) state() string {
	if s.stateDir != "" {
		return s.stateDir
	}
	return filepath.Join(s.statusDir, "pushed")
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
	var dryRun bool
	var sf sessionFlags
	var src source.Flags
	fs := cli.NewFlagSet("push")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME` (required)")
	fs.StringVar(&signKey, "sign-key", "", "sign the session's manifest with the Ed25519 key in `FILE` (required: the agent accepts only a manifest signed by a key it trusts)")
	sf.register(fs)
	fs.BoolVar(&dryRun, "dry-run", false, "sign and send nothing: print which credentials would be added, changed or removed (names and sizes, never values or digests), compared with this host's record of the last set the agent accepted, and the generation the agent holds")
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
	if dryRun {
		return d.dryRun(ctx, env, vm, a, &sf, list, key)
	}
	return d.session(ctx, env, vm, a, &sf, push.Request{VM: vm, Key: key, IssuedAt: d.now(), Credentials: list})
}

// dryRun prints what a push of list would change, by name and size.
//
// What the guest holds is judged from this host's record of the last set
// the agent accepted (the state folder), not by asking the agent for its
// manifest: the set only changes through sessions signed by this host's
// key, which is what the record follows, and a protocol message that hands
// out the guest's manifest (its digests) would be one more thing to
// authenticate. The agent is asked only for its generation (its CHALLENGE,
// after which push hangs up): when it is not the recorded one, the guest's
// set is not the recorded one either (it rebooted, or another key signed),
// and dry-run says so.
func (d deps) dryRun(ctx context.Context, env *cli.Env, vm string, a address.Address, sf *sessionFlags, list []push.Credential, key ed25519.PrivateKey) error {
	rec, err := push.ReadRecord(sf.state(), vm)
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	mk := push.RecordKey(key)
	defer clear(mk)
	diff := push.Compare(rec, list, mk)
	w := env.Stdout
	if rec == nil {
		fmt.Fprintf(w, "vm %s: no record of an earlier push in %s: every credential would be sent as new\n", vm, sf.state())
	} else {
		fmt.Fprintf(w, "vm %s: compared with generation %d, pushed %s\n", vm, rec.Generation, rec.At.Format(time.RFC3339))
	}
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	ch, perr := push.Peek(ctx, push.Config{Address: a})
	switch {
	case perr != nil:
		env.Log.Warn(fmt.Sprintf("vm %s: could not ask the agent at %s for its generation: %v", vm, a, perr))
	case rec != nil && ch.Generation != rec.Generation:
		fmt.Fprintf(w, "the agent holds generation %d, not the recorded %d: its set may differ from the record (it rebooted, or another key signed); a push sends every credential and the agent restarts the consumers of those that differ\n", ch.Generation, rec.Generation)
	default:
		fmt.Fprintf(w, "the agent holds generation %d; a push would sign generation %d\n", ch.Generation, max(ch.Generation+1, nextGeneration(rec)))
	}
	for _, c := range diff.Changed {
		fmt.Fprintf(w, "would change: %s (%d bytes, was %d)\n", c.Name, c.Size, c.Was)
	}
	for _, c := range diff.Added {
		fmt.Fprintf(w, "would add:    %s (%d bytes)\n", c.Name, c.Size)
	}
	for _, c := range diff.Removed {
		fmt.Fprintf(w, "would remove: %s (was %d bytes)\n", c.Name, c.Size)
	}
	if diff.Empty() {
		fmt.Fprintf(w, "nothing would change (%d credentials unchanged)\n", len(diff.Unchanged))
	} else {
		fmt.Fprintf(w, "%d unchanged\n", len(diff.Unchanged))
	}
	return nil
}

// nextGeneration is the lowest generation the next push may sign after
// rec: one above it (1 without a record).
func nextGeneration(rec *push.Record) uint64 {
	if rec == nil {
		return 1
	}
	return rec.Generation + 1
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
	rec, err := push.ReadRecord(sf.state(), vm)
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	req.MinGeneration = nextGeneration(rec)
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
	if out.Report.Generation == out.Generation && out.Generation > 0 {
		// The agent holds the set this session signed (ready, or in
		// place with a consumer that did not come back): record it.
		mk := push.RecordKey(req.Key)
		werr = errors.Join(werr, push.WriteRecord(sf.state(), push.NewRecord(vm, out.Generation, d.now(), req.Credentials, mk)))
		clear(mk)
	}
	for _, u := range st.Units {
		fmt.Fprintf(env.Stdout, "%s %s (%s): %s\n", u.Action, u.Unit, strings.Join(u.Credentials, ", "), u.Result)
	}
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
