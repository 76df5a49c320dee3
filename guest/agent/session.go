package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// DefaultPort is the vsock port the agent listens on: privileged (at most
// address.PrivilegedPorts), so only guest root can bind it and whoever
// answers the host there is guest root (DESIGN §8), and not one anything
// else is known to use (systemd ≥ 256's ssh generator takes 22; QEMU's
// guest agent and Kata use ports above 1023).
const DefaultPort = 730

// Where the manifest came from (Report.ManifestSource).
const (
	ManifestFromFirmware = "firmware"
	ManifestFromSession  = "session"
)

// SourceChannel is the Source of a credential that came in a host session.
const SourceChannel = "channel"

// OutcomeWaiting is the boot-time outcome of an agent whose firmware brought
// nothing complete: the credstore waits for the host's session.
const OutcomeWaiting = "waiting"

// Session defaults.
const (
	// DefaultHandshakeTimeout bounds a connection from accept until its
	// whole MANIFEST has arrived and been checked.
	DefaultHandshakeTimeout = 30 * time.Second
	// DefaultSessionTimeout bounds the rest of an authenticated session:
	// waiting for another session to finish, the values, the write, the
	// REPORT and the ACK.
	DefaultSessionTimeout = 2 * time.Minute
	// DefaultMaxPending bounds connections that have not yet shown a
	// manifest signed for their challenge. When it is reached, the oldest
	// of them is closed to make room: an idle peer never keeps the host
	// out.
	DefaultMaxPending = 16
)

// ChannelStep is what happened in the host session. It holds no value.
type ChannelStep struct {
	// Address is the peer's address as the listener saw it.
	Address string `json:"address"`
	// Attempts counts connections made (always 1 for a session).
	Attempts int `json:"attempts"`
	// Received lists the credentials the host sent.
	Received []string `json:"received"`
	// Error is why the session failed, if it did.
	Error string `json:"error,omitempty"`
	// Reported is true when the REPORT went out and the host answered;
	// Acknowledged when that answer was an ACK, whose text is Ack.
	Reported     bool   `json:"reported"`
	Acknowledged bool   `json:"acknowledged"`
	Ack          string `json:"ack,omitempty"`
	ReportError  string `json:"report_error,omitempty"`
}

// sessionInput is what one host session brought, for verify.
type sessionInput struct {
	envelope []byte
	creds    []oemstring.Entry
	// challenge is the one this connection sent; generation the one the
	// agent held when it sent it.
	challenge  [proto.ChallengeSize]byte
	generation uint64
	step       *ChannelStep
	took       time.Duration
	// rotate is true when the agent already exposed a set: the session
	// replaces it with Store.Rotate (all or nothing, unchanged files keep
	// their inode) and must bring a higher generation.
	rotate bool
}

// Change is one credential a session changed in the credstore: a new or
// different value, or (Removed) one no longer delivered.
type Change struct {
	Name    string
	Policy  manifest.Policy
	Removed bool
}

// Rotator is the seam for what follows a credstore change without a
// reboot (DESIGN §8 "Rotation"): restarting or reloading, per Policy, the
// units that consume a changed credential. The agent calls Rotated after a
// session replaced a set it had exposed before, and before it reports,
// with a context whose deadline is the session's (the host's --timeout,
// less a moment for the report). It returns one outcome per unit acted
// on; the error, if any, names each unit that did not come back, and makes
// the report failed. Implementations live elsewhere (vmcred-guest agent
// wires guest/consumers); this package knows nothing of D-Bus.
type Rotator interface {
	Rotated(ctx context.Context, changes []Change) ([]UnitOutcome, error)
}

// UnitOutcome is what a rotation did to one running service. Names only,
// never a value.
type UnitOutcome struct {
	Unit string `json:"unit"`
	// Action is the policy applied: restart, reload or none.
	Action string `json:"action"`
	// Credentials lists the changed credentials the unit uses.
	Credentials []string `json:"credentials"`
	// Result is "active" when it came back, "skipped" for policy none,
	// else what went wrong ("failed", "inactive", "timeout", ...).
	Result string `json:"result"`
	// OK is true when the unit came back or was left alone by policy.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Rotation is what a session that replaced an exposed set did: the
// generations, when, what changed in the credstore and what happened to
// each consumer. The status file keeps it (`vmcred-guest status`, `list`).
type Rotation struct {
	From uint64    `json:"from_generation"`
	To   uint64    `json:"to_generation"`
	At   time.Time `json:"at"`
	// Added, Changed, Unchanged and Removed are the credstore's names
	// (credstore.Rotation); Unchanged files kept their inode.
	Added     []string `json:"added,omitempty"`
	Changed   []string `json:"changed,omitempty"`
	Unchanged []string `json:"unchanged,omitempty"`
	Removed   []string `json:"removed,omitempty"`
	// Units lists what was done to each consumer of a changed credential.
	Units []UnitOutcome `json:"units"`
	// BudgetMS is how long the host gave the session (its --timeout, as
	// it stood when it signed), in milliseconds; the restarts ended before
	// it ran out. 0 when the manifest carried none.
	BudgetMS int64 `json:"budget_ms,omitempty"`
	// Error is why a consumer did not come back, or the consumers could
	// not be asked; empty when all is well.
	Error string `json:"error,omitempty"`
}

// Options tune an Agent. The zero value is usable.
type Options struct {
	// Rand draws challenges (crypto/rand when nil).
	Rand io.Reader
	// Rotator, when set, is told what each session changed.
	Rotator Rotator
	// OnReport is called after the boot load and after every session,
	// with the report written to the status folder and the error (nil
	// when ready). It must not block for long.
	OnReport func(Report, error)
	// AcceptPeer, when set, is asked about each connection before
	// anything is sent; an error closes it (the AF_VSOCK listener checks
	// the peer CID with it).
	AcceptPeer func(net.Conn) error
	// HandshakeTimeout, SessionTimeout and MaxPending default to the
	// Default… constants.
	HandshakeTimeout, SessionTimeout time.Duration
	MaxPending                       int
}

// Agent is the long-lived guest agent: it holds the generation and the
// digests of what it exposed, and serves host sessions one at a time.
type Agent struct {
	cfg  Config
	opts Options
	// sem is held by the one session that may read values and write.
	sem chan struct{}

	mu         sync.Mutex
	generation uint64
	exposed    map[string][sha256.Size]byte
	pending    []*pendingConn
}

// pendingConn is a connection that has not yet shown a manifest signed for
// its challenge. started is set once its first byte after the challenge
// arrived: such a peer is sending, bounded by the handshake deadline and
// the manifest's frame limit, and is not shed for a newcomer.
type pendingConn struct {
	net.Conn
	closed  atomic.Bool
	started atomic.Bool
}

// Read marks the connection started at its first byte.
func (p *pendingConn) Read(b []byte) (int, error) {
	n, err := p.Conn.Read(b)
	if n > 0 {
		p.started.Store(true)
	}
	return n, err
}

// New checks cfg for sessions and returns an Agent. Sessions need a VM
// name and at least one trusted key: the manifest comes down the same
// connection as the values, so only a signature over this connection's
// challenge can vouch for it.
func New(cfg Config, opts Options) (*Agent, error) {
	if cfg.VM == "" {
		return nil, cli.Usagef("agent: --vm NAME is required: every session's manifest must be issued for this VM")
	}
	if len(cfg.TrustKeys) == 0 {
		return nil, cli.Usagef("agent: give at least one --trust-key: a session's manifest comes with the values it vouches for, so only a signature by a trusted key can verify it")
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = DefaultSessionTimeout
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	return &Agent{cfg: cfg, opts: opts, sem: make(chan struct{}, 1), exposed: map[string][sha256.Size]byte{}}, nil
}

// Generation is the generation of the credential set the agent holds.
func (a *Agent) Generation() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.generation
}

// Boot loads what firmware carries, as `vmcred-guest load` does. It
// returns ready when the credstore is complete from firmware alone. When
// firmware carries nothing, or a manifest that lists credentials for the
// host's session, the outcome is OutcomeWaiting and the error nil: the
// session completes the credstore. Any other failure is returned (the
// agent keeps listening: a session can still bring a good set).
//
// An agent that restarts (Restart=on-failure) after a session wrote the
// credstore this boot does not load the firmware again: firmware carries
// the boot's set, and loading it would put an older generation, possibly
// a revoked secret, back over the one the session brought. It keeps the
// store as it is, adopts the session's generation, and is ready.
func (a *Agent) Boot() (Report, error) {
	if prev, ok := a.sessionThisBoot(); ok {
		a.mu.Lock()
		a.generation = prev.Generation
		a.mu.Unlock()
		prev.Summary = fmt.Sprintf("kept generation %d, which a host session wrote this boot before the agent restarted (the firmware's set is not loaded over it)", prev.Generation)
		prev.Outcome = OutcomeReady
		if a.opts.OnReport != nil {
			a.opts.OnReport(prev, nil)
		}
		return prev, nil
	}
	rep, v, err := run(a.cfg, nil)
	if err != nil && waitingOnly(a.cfg, rep, v) {
		rep.Outcome, err = OutcomeWaiting, nil
		rep.Summary = "waiting for the host's session"
		// Not problems: the session brings what is missing (each
		// credential it awaits says so in its own record).
		rep.Problems = nil
		if a.cfg.StatusDir != "" {
			if werr := WriteStatus(a.cfg.StatusDir, rep); werr != nil {
				err = cli.WithCode(cli.ExitIO, werr)
			}
		}
	}
	if err == nil && rep.Outcome == OutcomeReady {
		a.mu.Lock()
		a.generation = rep.Generation
		a.exposed = digests(v.expose)
		a.mu.Unlock()
	}
	if a.opts.OnReport != nil {
		a.opts.OnReport(rep, err)
	}
	return rep, err
}

// sessionThisBoot returns the status of a host session that wrote the
// credstore this boot (the status folder and the store's state file are
// on /run): the agent restarted after it.
func (a *Agent) sessionThisBoot() (Report, bool) {
	if a.cfg.StatusDir == "" {
		return Report{}, false
	}
	if _, err := os.Stat(filepath.Join(a.cfg.StatusDir, stateFile)); err != nil {
		return Report{}, false
	}
	rep, err := ReadStatus(a.cfg.StatusDir)
	if err != nil || rep.ManifestSource != ManifestFromSession || rep.Store == nil || rep.Generation == 0 {
		return Report{}, false
	}
	return rep, true
}

// waitingOnly reports whether a failed boot load failed only because the
// session has not come yet: no firmware at all, no manifest and no
// credentials, or a manifest whose only missing credentials go by channel.
func waitingOnly(cfg Config, rep Report, v verified) bool {
	if rep.Store != nil {
		return false
	}
	if rep.ManifestSource == "" {
		for _, s := range rep.Sources {
			if s.Fault != "" {
				return false
			}
		}
		return len(rep.Credentials) == 0
	}
	if !v.needSession {
		return false
	}
	for _, c := range rep.Credentials {
		if c.Problem != "" && c.Verification != "awaiting-session" {
			return false
		}
	}
	return len(rep.Problems) == countAwaiting(rep)
}

func countAwaiting(rep Report) int {
	n := 0
	for _, c := range rep.Credentials {
		if c.Verification == "awaiting-session" {
			n++
		}
	}
	return n
}

func digests(entries []credstore.Entry) map[string][sha256.Size]byte {
	m := make(map[string][sha256.Size]byte, len(entries))
	for _, e := range entries {
		m[e.Name] = e.Value.SHA256()
	}
	return m
}

// Serve accepts host sessions on l until ctx ends, then closes l and
// returns nil (or the accept error that stopped it). Each connection gets
// its own challenge at once; connections that have not shown a manifest
// signed for it are bounded by MaxPending, and the oldest is closed to
// make room for a newcomer.
func (a *Agent) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// A transient accept error (EMFILE): pause, go on.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.handle(ctx, c)
		}()
	}
}

// admit adds c to the pending table. When the table is full, the oldest
// connection that has sent nothing since its challenge is closed to make
// room; if every one is sending, the newcomer is refused (nil) and the
// host dials again.
func (a *Agent) admit(c net.Conn) *pendingConn {
	p := &pendingConn{Conn: c}
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(a.pending) >= a.opts.MaxPending {
		i := slices.IndexFunc(a.pending, func(q *pendingConn) bool { return !q.started.Load() })
		if i < 0 {
			return nil
		}
		old := a.pending[i]
		a.pending = slices.Delete(a.pending, i, i+1)
		old.closed.Store(true)
		old.Close()
	}
	a.pending = append(a.pending, p)
	return p
}

// authenticated takes p out of the pending table; false if it was shed.
func (a *Agent) authenticated(p *pendingConn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := slices.Index(a.pending, p)
	if i < 0 {
		return false
	}
	a.pending = slices.Delete(a.pending, i, i+1)
	return !p.closed.Load()
}

func (a *Agent) drop(p *pendingConn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i := slices.Index(a.pending, p); i >= 0 {
		a.pending = slices.Delete(a.pending, i, i+1)
	}
}

// handle runs one session on c. Nothing is written unless the manifest is
// signed by a trusted key over this connection's challenge, for this VM,
// and every value matches it.
func (a *Agent) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	// Serve returns once every handler has: stopping closes the
	// connection under any read or write.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if a.opts.AcceptPeer != nil {
		if err := a.opts.AcceptPeer(c); err != nil {
			return
		}
	}
	p := a.admit(c)
	if p == nil {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_ = proto.NewAgent(c).WriteError(proto.CodeUnavailable, "too many connections are sending; try again")
		return
	}
	defer a.drop(p)
	start := time.Now()
	_ = c.SetDeadline(start.Add(a.opts.HandshakeTimeout))
	conn := proto.NewAgent(struct {
		io.Reader
		io.Writer
	}{p, c})

	var challenge [proto.ChallengeSize]byte
	if _, err := io.ReadFull(a.opts.Rand, challenge[:]); err != nil {
		_ = conn.WriteError(proto.CodeInternal, "no randomness for a challenge")
		return
	}
	gen := a.Generation()
	if err := conn.WriteChallenge(proto.Challenge{Nonce: challenge, Generation: gen, BootID: readBootID(a.cfg.Root), AgentVersion: agentVersion(a.cfg.Version)}); err != nil {
		return
	}
	envelope, err := conn.ReadManifest()
	if err != nil {
		return
	}
	step := &ChannelStep{Address: peerName(c), Attempts: 1, Received: []string{}}
	sess := &sessionInput{envelope: envelope, challenge: challenge, generation: gen, step: step}

	// Check the manifest before reading any value or waiting for another
	// session: an unauthenticated peer costs one bounded frame. A refusal
	// is a REPORT (failed), after which the agent closes.
	sess.rotate = a.hasExposed()
	received := time.Now()
	budget, problem := a.preflight(sess)
	if problem != "" {
		step.Error = problem
		rep := Report{Outcome: OutcomeFailed, Summary: "session refused: " + problem, Problems: []string{problem},
			Version: a.cfg.Version, Credentials: []CredentialResult{}, Generation: gen, Fetch: step}
		a.reply(conn, c, rep, gen, step, false)
		if a.opts.OnReport != nil {
			a.opts.OnReport(rep, cli.WithCode(cli.ExitFailure, &Failure{Problems: []string{problem}}))
		}
		return
	}
	if !a.authenticated(p) {
		return
	}
	deadline := time.Now().Add(a.opts.SessionTimeout)
	if budget > 0 {
		// The host's --timeout, as it stood when it signed: end in time
		// for the REPORT to reach it.
		deadline = received.Add(budget - reportReserve(budget))
	}
	_ = c.SetDeadline(deadline)
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	case <-ctx.Done():
		return
	case <-time.After(time.Until(deadline)):
		_ = conn.WriteError(proto.CodeUnavailable, "another session held the agent too long")
		return
	}
	// Another session may have moved the generation on while this one
	// waited: its challenge still names the old one, which check allows
	// only if the manifest is not older than the new one.
	sess.generation = max(gen, a.Generation())
	sess.rotate = sess.rotate || a.hasExposed()

	t := time.Now()
	creds, err := conn.ReadCredentials()
	sess.took = time.Since(t)
	if err != nil {
		return
	}
	for i, cr := range creds {
		step.Received = append(step.Received, cr.Name)
		sess.creds = append(sess.creds, oemstring.Entry{Name: cr.Name, Value: cr.Value, Source: SourceChannel, Index: i})
	}
	rep, v, err := run(a.cfg, sess)
	held := a.Generation()
	if err == nil && rep.Outcome == OutcomeReady {
		// Before the wipe: the exposed entries alias the received values.
		a.commit(v, rep.Generation)
	}
	for _, cr := range creds {
		cr.Value.Wipe()
	}
	if err == nil && rep.Outcome == OutcomeReady {
		from := held
		held = rep.Generation
		if rep.Rotation != nil {
			changes := rotationChanges(rep.Rotation, v.m)
			rep.Rotation.From = from
			rep.Rotation.BudgetMS = budget.Milliseconds()
			err = a.restartConsumers(ctx, deadline, changes, &rep)
			if a.cfg.StatusDir != "" {
				// Before the REPORT: once push has it, `status` must show
				// the rotation whole (generations, units), not run's
				// earlier write.
				_ = WriteStatus(a.cfg.StatusDir, rep)
			}
		}
	}
	a.reply(conn, c, rep, held, step, true)
	if a.cfg.StatusDir != "" {
		// Again, now that the step says whether the host acknowledged.
		_ = WriteStatus(a.cfg.StatusDir, rep)
	}
	if a.opts.OnReport != nil {
		a.opts.OnReport(rep, err)
	}
}

// preflight applies the checks that need no values (Check with none):
// signature, VM, challenge, generation, not-after. It returns the
// manifest's session budget, or a problem.
func (a *Agent) preflight(s *sessionInput) (time.Duration, string) {
	now := time.Now
	if a.cfg.Now != nil {
		now = a.cfg.Now
	}
	res := Check(a.cfg.policy(), now(), Input{Manifest: s.envelope, Session: true, Binding: &Binding{Challenge: s.challenge, Generation: s.generation, Rotation: s.rotate}})
	if len(res.ManifestProblems) > 0 {
		return 0, ManifestName + ": " + res.ManifestProblems[0].Error()
	}
	if res.Manifest == nil {
		return 0, ""
	}
	return res.Manifest.Budget, ""
}

// reportReserve is the part of a session's budget kept for the REPORT to
// reach the host, and for the time the manifest took to arrive (the
// budget is counted from when the host signed): a fifth, at least 500 ms
// and at most 5 s, never more than half.
func reportReserve(budget time.Duration) time.Duration {
	return min(max(budget/5, 500*time.Millisecond), 5*time.Second, budget/2)
}

// hasExposed reports whether a set was exposed this boot: a session then
// is a rotation. Either this agent exposed one, or an earlier run of it
// did (the agent restarted): the credstore's state file, in the status
// folder on /run, records what vmcred wrote this boot.
func (a *Agent) hasExposed() bool {
	a.mu.Lock()
	n := len(a.exposed)
	a.mu.Unlock()
	if n > 0 {
		return true
	}
	if a.cfg.StatusDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(a.cfg.StatusDir, stateFile))
	return err == nil
}

// rotationChanges is what a rotation changed, from the store's own
// account (which holds even when this agent did not expose the old set
// itself), with each credential's signed policy.
func rotationChanges(r *Rotation, m *manifest.Manifest) []Change {
	var out []Change
	for _, name := range slices.Concat(r.Added, r.Changed) {
		out = append(out, Change{Name: name, Policy: policyOf(m, name)})
	}
	for _, name := range r.Removed {
		out = append(out, Change{Name: name, Removed: true})
	}
	slices.SortFunc(out, func(x, y Change) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// restartConsumers hands a rotation's changes to the Rotator, bounded by
// the session's deadline, and records the per-unit outcomes in rep. A unit
// that did not come back makes the report failed, naming it; the new set
// stays in place (the old secret may be the one being revoked).
func (a *Agent) restartConsumers(ctx context.Context, deadline time.Time, changes []Change, rep *Report) error {
	rot := rep.Rotation
	rot.Units = []UnitOutcome{}
	if a.opts.Rotator == nil || len(changes) == 0 {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	units, rerr := a.opts.Rotator.Rotated(ctx, changes)
	if units != nil {
		rot.Units = units
	}
	if rerr == nil {
		return nil
	}
	rot.Error = rerr.Error()
	var failed []string
	for _, u := range units {
		if !u.OK {
			failed = append(failed, u.Unit)
		}
	}
	problem := "consumers: " + rerr.Error()
	if len(failed) > 0 {
		problem = fmt.Sprintf("generation %d is in place, but %s did not come back: %s", rot.To, strings.Join(failed, ", "), rerr.Error())
	}
	rep.Outcome = OutcomeFailed
	rep.Problems = append(rep.Problems, problem)
	rep.Summary = "rotation failed: " + problem
	return cli.WithCode(cli.ExitFailure, &Failure{Problems: []string{problem}})
}

// commit records a ready session's generation and the digests of what it
// exposed.
func (a *Agent) commit(v verified, gen uint64) {
	now := digests(v.expose)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.generation, a.exposed = gen, now
}

func policyOf(m *manifest.Manifest, name string) manifest.Policy {
	if m != nil {
		if e, ok := m.Lookup(name); ok {
			return e.Policy
		}
	}
	return manifest.PolicyRestart
}

// reply sends the REPORT and, when the session got that far (the values
// were read), reads the ACK, recording both in step. A session refused on
// its manifest ends with the REPORT: the agent never reads the values of
// a manifest it did not accept, so the host's ACK would land behind them.
func (a *Agent) reply(conn *proto.Conn, c net.Conn, rep Report, held uint64, step *ChannelStep, wantAck bool) {
	_ = c.SetDeadline(time.Now().Add(a.opts.HandshakeTimeout))
	w := wireReport(&rep)
	w.Generation = held
	if err := conn.WriteReport(w); err != nil {
		step.ReportError = err.Error()
		return
	}
	if !wantAck {
		step.Reported = true
		return
	}
	ack, err := conn.ReadAck()
	if err != nil {
		step.ReportError = err.Error()
		return
	}
	step.Reported, step.Acknowledged, step.Ack = true, true, ack
}

func peerName(c net.Conn) string {
	if ra := c.RemoteAddr(); ra != nil && ra.String() != "" && ra.String() != "@" {
		return ra.Network() + ":" + ra.String()
	}
	return "unix"
}

// wireReport turns the load's report into the session's REPORT: names,
// sizes, digest prefixes and verdicts; never a value.
func wireReport(rep *Report) proto.Report {
	r := proto.Report{
		Outcome:      proto.OutcomeFailed,
		Summary:      rep.Summary,
		AgentVersion: agentVersion(rep.Version),
		Generation:   rep.Generation,
		Timings: proto.Timings{
			Read: fromMS(rep.Timings.Read), Verify: fromMS(rep.Timings.Verify), Fetch: fromMS(rep.Timings.Fetch),
			Write: fromMS(rep.Timings.Write), Total: fromMS(rep.Timings.Total),
		},
	}
	if rep.Outcome == OutcomeReady {
		r.Outcome = proto.OutcomeReady
	}
	if len(rep.Problems) > 0 && r.Summary == "" {
		r.Summary = strings.Join(rep.Problems, "; ")
	}
	if rep.Rotation != nil {
		for _, u := range rep.Rotation.Units {
			if len(r.Units) == proto.MaxReportUnits {
				break
			}
			r.Units = append(r.Units, wireUnit(u))
		}
	}
	for _, c := range rep.Credentials {
		if len(r.Credentials) == proto.MaxReportEntries {
			break
		}
		cr := proto.CredentialReport{Name: c.Name, Size: uint64(max(c.Size, 0)), Delivery: proto.Delivery(token(c.Delivery)),
			Verification: proto.Verification(token(c.Verification)), Error: c.Problem}
		if len(c.SHA256) >= 2*proto.DigestPrefixLen {
			cr.SHA256Prefix = c.SHA256[:2*proto.DigestPrefixLen]
		}
		if c.Source == SourceChannel && c.Delivery == "" {
			cr.Delivery = proto.DeliveryChannel
		}
		r.Credentials = append(r.Credentials, cr)
	}
	return r
}

// wireUnit is a unit's outcome for the REPORT: a unit name the protocol
// cannot carry is replaced, and only the first credentials go.
func wireUnit(u UnitOutcome) proto.UnitReport {
	w := proto.UnitReport{Unit: u.Unit, Action: token(u.Action), Result: u.Result, OK: u.OK, Error: u.Error}
	if w.Unit == "" || len(w.Unit) > proto.MaxUnitNameLen || strings.ContainsFunc(w.Unit, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
		w.Unit = "invalid-unit-name"
	}
	w.Credentials = u.Credentials[:min(len(u.Credentials), proto.MaxUnitCredentials)]
	return w
}

// token keeps s if it is a valid Delivery/Verification token, else maps it
// to one ("invalid").
func token(s string) string {
	if len(s) > proto.MaxTokenLen {
		return "invalid"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "invalid"
		}
	}
	return s
}

func fromMS(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// agentVersion is the version string the agent reports: printable ASCII,
// bounded, never empty.
func agentVersion(v string) string {
	if v == "" {
		v = "dev"
	}
	b := []byte("vmcred-guest " + v)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(b) > proto.MaxVersionLen {
		b = b[:proto.MaxVersionLen]
	}
	return string(b)
}

// bootIDPath is the kernel's boot ID, relative to Config.Root.
const bootIDPath = "proc/sys/kernel/random/boot_id"

// readBootID reads the kernel's boot ID, or "" if there is none to read.
func readBootID(root fs.FS) string {
	if root == nil {
		return ""
	}
	f, err := root.Open(bootIDPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, proto.MaxBootIDLen+1))
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if len(id) > proto.MaxBootIDLen {
		return ""
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return ""
		}
	}
	return id
}

// saveManifest keeps the manifest a session brought as dir/ManifestFile
// (atomically, mode 0600), and removes an earlier copy after a firmware
// load. load calls it once everything is verified, just before the
// credstore write: a load that fails verification returns before it and
// leaves any earlier copy as it was, like the credstore; a save that fails
// fails the load (exit 3) with the credstore untouched, and
// writeFileAtomic leaves no partial file.
//
// Why: the host sends the session's manifest once and no firmware holds
// it, so without a copy `vmcred-guest verify`, `list` and `show` would
// have nothing to check the credstore against. What is saved are the
// exact signed bytes: names, sizes, SHA-256 digests, policies, the VM name,
// the challenge and the generation, never a value; digests of guessable
// values are secret too, hence root only. The commands re-verify its
// signature against the trust keys before using it: being on disk proves
// nothing.
func saveManifest(dir, source string, v verified) error {
	if dir == "" {
		return nil
	}
	path := filepath.Join(dir, ManifestFile)
	if source == ManifestFromSession && v.envelope != nil {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create status folder: %w", err)
		}
		return writeFileAtomic(path, v.envelope, 0o600)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale manifest copy %s: %w", path, err)
	}
	return nil
}

// CheckListen says whether the agent may listen on a: an AF_VSOCK port
// must be privileged (1 to address.PrivilegedPorts), or the guarantee that
// only guest root answers the host is void; unix:PATH (tests and simulated
// VMs) is accepted.
func CheckListen(a address.Address) error {
	if err := a.CheckListen(); err != nil {
		return err
	}
	if a.IsVsock() && !a.IsPrivileged() {
		return fmt.Errorf("listen %s: port %d is not privileged: any guest process can bind a port above %d, so the host could not tell the agent from it; use a port from 1 to %d (default %d)",
			a, a.Port, address.PrivilegedPorts, address.PrivilegedPorts, DefaultPort)
	}
	if a.Kind == address.Unix && strings.HasPrefix(a.Path, "@") {
		return fmt.Errorf("listen %s: an abstract Unix socket has no permissions; use a socket file in a private folder", a)
	}
	return nil
}
