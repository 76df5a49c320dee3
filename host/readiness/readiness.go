// Package readiness records what the host learns about a guest's start:
// the vmcred agent's REPORT (the guest has its credentials, verified, or
// names the ones that failed) and guest PID 1's own sd_notify messages
// (READY=1, STATUS=…) from the same channel port. It keeps them in a status
// file per VM (JSON, mode 0600, names and digest prefixes but never a
// value), tells the host's own service manager (READY=1 and STATUS= through
// an injected notifier, e.g. go-systemd's daemon.SdNotify), and lets
// `vmcred-host wait` block until the guest is ready or has failed.
//
// Readiness means the agent's authenticated REPORT said "ready". PID 1's
// READY=1 is recorded as the guest's boot readiness but never makes a VM
// ready by itself: any process in the guest can connect to the host's
// vsock port and write "READY=1", while only the agent holds the token.
//
// This package is for host code (host/cmd/vmcred-host). It does not log.
package readiness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/host/atomicfile"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/notify"
	"github.com/vmcred/vmcred/shared/termtext"
)

// DefaultStatusDir is where serve writes and wait reads status files.
const DefaultStatusDir = "/run/vmcred-host"

// maxStatusFile bounds what Read reads: a report of 4096 credentials with
// long error texts stays well under it.
const maxStatusFile = 8 << 20

// State is the VM's readiness.
type State string

// States.
const (
	// Waiting: the server runs; no report yet (or a new boot began).
	Waiting State = "waiting"
	// Ready: the agent reported every credential verified and exposed.
	Ready State = "ready"
	// Failed: the agent reported a failure.
	Failed State = "failed"
)

// Status is the content of a VM's status file.
type Status struct {
	VM    string `json:"vm"`
	State State  `json:"state"`
	// Summary is one line for humans.
	Summary string `json:"summary"`
	// Failures name each credential that failed and why.
	Failures []string `json:"failures,omitempty"`
	// Listen is the address the server is bound to (with the port the
	// kernel picked for an AF_VSOCK port 0).
	Listen string `json:"listen,omitempty"`
	// Channel is the address the guest dials.
	Channel   string    `json:"channel,omitempty"`
	ServerPID int       `json:"server_pid,omitempty"`
	StartedAt time.Time `json:"started_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Fetch is the last time the channel credentials were sent.
	Fetch *Fetch `json:"fetch,omitempty"`
	// Report is the agent's last report.
	Report *Report `json:"report,omitempty"`
	// Boot is what guest PID 1 said over vmm.notify_socket.
	Boot *Boot `json:"boot,omitempty"`
}

// Fetch records a delivery of the channel credentials.
type Fetch struct {
	At          time.Time `json:"at"`
	Peer        string    `json:"peer"`
	BootID      string    `json:"boot_id,omitempty"`
	Credentials []string  `json:"credentials"`
	Bytes       int64     `json:"bytes"`
}

// Report is the agent's REPORT as received.
type Report struct {
	At           time.Time           `json:"at"`
	Peer         string              `json:"peer"`
	BootID       string              `json:"boot_id,omitempty"`
	Outcome      string              `json:"outcome"`
	Summary      string              `json:"summary"`
	AgentVersion string              `json:"agent_version"`
	TimingsMS    map[string]int64    `json:"timings_ms"`
	Credentials  []CredentialFinding `json:"credentials"`
}

// CredentialFinding is the agent's finding about one credential: no value,
// a digest prefix at most.
type CredentialFinding struct {
	Name         string `json:"name"`
	Size         uint64 `json:"size"`
	SHA256Prefix string `json:"sha256_prefix,omitempty"`
	Delivery     string `json:"delivery,omitempty"`
	Verification string `json:"verification"`
	Error        string `json:"error,omitempty"`
}

// Boot is guest PID 1's readiness, from its sd_notify messages.
type Boot struct {
	Ready      bool       `json:"ready"`
	ReadyAt    *time.Time `json:"ready_at,omitempty"`
	Status     string     `json:"status,omitempty"`
	Hostname   string     `json:"hostname,omitempty"`
	ExitStatus *int       `json:"exit_status,omitempty"`
	Shutdown   string     `json:"shutdown,omitempty"`
	Messages   int        `json:"messages"`
	LastAt     time.Time  `json:"last_at"`
}

// Path is the status file of vm in dir.
func Path(dir, vm string) string { return filepath.Join(dir, vm+".json") }

// Write writes st to Path(dir, st.VM) atomically, mode 0600, creating dir
// (0700) if needed.
func Write(dir string, st Status) error {
	if err := credential.ValidateName(st.VM); err != nil {
		return fmt.Errorf("write status: vm: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create status folder: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	return atomicfile.WriteFile(Path(dir, st.VM), append(b, '\n'), 0o600)
}

// Read reads vm's status file in dir. A missing file wraps fs.ErrNotExist.
func Read(dir, vm string) (Status, error) {
	var st Status
	if err := credential.ValidateName(vm); err != nil {
		return st, fmt.Errorf("read status: vm: %w", err)
	}
	path := Path(dir, vm)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return st, fmt.Errorf("read status: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStatusFile+1))
	if err != nil {
		return st, fmt.Errorf("read status %s: %w", path, err)
	}
	if len(b) > maxStatusFile {
		return st, fmt.Errorf("read status %s: over %d bytes", path, maxStatusFile)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("decode status %s: %w", path, err)
	}
	return st, nil
}

// DefaultPoll is how often Wait reads the status file.
const DefaultPoll = 100 * time.Millisecond

// Wait reads vm's status file every poll (DefaultPoll if 0) until its
// state is Ready or Failed, and returns it. A missing or half-written
// file is waited for (serve may not have started yet). It returns ctx's
// error, wrapped, when ctx ends first.
func Wait(ctx context.Context, dir, vm string, poll time.Duration) (Status, error) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	var last error
	for {
		st, err := Read(dir, vm)
		if err == nil && (st.State == Ready || st.State == Failed) {
			return st, nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return st, fmt.Errorf("wait for vm %s: %w (last error: %w)", vm, ctx.Err(), last)
			}
			return st, fmt.Errorf("wait for vm %s: %w (state %q)", vm, ctx.Err(), st.State)
		case <-t.C:
		}
	}
}

// Notifier sends an sd_notify message to the host's own service manager;
// go-systemd's daemon.SdNotify fits.
type Notifier func(state string) error

// Recorder turns channel server events into the status file and sd_notify
// messages to the host's service manager. Its methods are safe for
// concurrent use.
type Recorder struct {
	dir    string
	notify Notifier
	now    func() time.Time

	mu  sync.Mutex
	st  Status
	err error // the last status write error
	// outcome is closed when the first report arrives; ready tells which.
	outcome chan struct{}
	ready   bool
	closed  bool
}

// NewRecorder starts a status for vm in dir (state Waiting, replacing any
// earlier file, so `wait` does not see a previous boot's outcome) and
// writes it. notify may be nil.
func NewRecorder(dir string, st Status, notify Notifier, now func() time.Time) (*Recorder, error) {
	if now == nil {
		now = time.Now
	}
	st.State, st.Summary = Waiting, "waiting for the guest's report"
	st.StartedAt = now().UTC()
	st.UpdatedAt = st.StartedAt
	r := &Recorder{dir: dir, notify: notify, now: now, st: st, outcome: make(chan struct{})}
	if err := Write(dir, st); err != nil {
		return nil, err
	}
	if notify != nil {
		_ = notify("STATUS=" + oneLine(fmt.Sprintf("guest %s: waiting for its report", st.VM)))
	}
	return r, nil
}

// Status returns a copy of the current status.
func (r *Recorder) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// Err returns the last error writing the status file, if any.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Outcome returns a channel closed when the first report arrives, and a
// function telling whether it said ready.
func (r *Recorder) Outcome() (<-chan struct{}, func() bool) {
	return r.outcome, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.ready
	}
}

// update changes the status under the lock and writes it.
func (r *Recorder) update(f func(st *Status)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.st)
	r.st.UpdatedAt = r.now().UTC()
	r.err = Write(r.dir, r.st)
}

// Events returns the server events that feed this recorder.
func (r *Recorder) Events() hostchannel.Events {
	return hostchannel.Events{Notify: r.Notify, Fetched: r.Fetched, Report: r.Report}
}

// Notify records a guest PID 1 message.
func (r *Recorder) Notify(p hostchannel.Peer, m notify.Message, _ string) {
	r.update(func(st *Status) {
		if st.Boot == nil {
			st.Boot = &Boot{}
		}
		b := st.Boot
		now := r.now().UTC()
		b.Messages++
		b.LastAt = now
		if m.Ready() && !b.Ready {
			b.Ready = true
			b.ReadyAt = &now
		}
		if v, ok := m.Status(); ok {
			b.Status = clean(v, 256)
		}
		if v, ok := m.Get(notify.KeyHostname); ok {
			b.Hostname = clean(v, 64)
		}
		if v, ok := m.ExitStatus(); ok {
			n := int(v)
			b.ExitStatus = &n
		}
		if v, ok := m.Get(notify.KeyShutdown); ok {
			b.Shutdown = clean(v, 32)
		}
	})
}

// Fetched records a delivery. A delivery after a report starts a new boot
// (a guest rebooted with --allow-refetch): the state goes back to Waiting.
func (r *Recorder) Fetched(p hostchannel.Peer, h hostchannel.Hello, names []string, bytes int64) {
	r.update(func(st *Status) {
		st.Fetch = &Fetch{At: r.now().UTC(), Peer: p.String(), BootID: h.BootID, Credentials: append([]string{}, names...), Bytes: bytes}
		if st.State != Waiting {
			st.State, st.Summary, st.Failures = Waiting, "credentials fetched again (guest rebooted?); waiting for its report", nil
		}
	})
}

// Report records the agent's report, tells the service manager and
// returns the ACK text.
func (r *Recorder) Report(p hostchannel.Peer, h hostchannel.Hello, rep proto.Report) string {
	rec := &Report{At: r.now().UTC(), Peer: p.String(), BootID: h.BootID, Outcome: rep.Outcome.String(), Summary: rep.Summary, AgentVersion: rep.AgentVersion,
		TimingsMS: map[string]int64{
			"read": rep.Timings.Read.Milliseconds(), "verify": rep.Timings.Verify.Milliseconds(), "fetch": rep.Timings.Fetch.Milliseconds(),
			"write": rep.Timings.Write.Milliseconds(), "total": rep.Timings.Total.Milliseconds(),
		},
		Credentials: make([]CredentialFinding, 0, len(rep.Credentials))}
	var failures []string
	verified := 0
	for _, c := range rep.Credentials {
		rec.Credentials = append(rec.Credentials, CredentialFinding{Name: c.Name, Size: c.Size, SHA256Prefix: c.SHA256Prefix,
			Delivery: string(c.Delivery), Verification: string(c.Verification), Error: c.Error})
		switch {
		case c.Error != "":
			failures = append(failures, fmt.Sprintf("%s: %s (%s)", c.Name, c.Verification, c.Error))
		case isVerified(c.Verification):
			verified++
		}
	}
	ready := rep.Outcome == proto.OutcomeReady
	var status, summary string
	if ready {
		summary = fmt.Sprintf("guest %s: %d credentials verified", r.vm(), verified)
		status = summary
	} else {
		names := make([]string, 0, len(failures))
		for _, c := range rep.Credentials {
			if c.Error != "" {
				names = append(names, c.Name)
			}
		}
		why := rep.Summary
		if why == "" {
			why = "load failed"
		}
		summary = fmt.Sprintf("guest %s: %s", r.vm(), why)
		status = summary
		if len(names) > 0 {
			status = fmt.Sprintf("guest %s: load failed: %s", r.vm(), strings.Join(names, ", "))
		}
	}
	r.update(func(st *Status) {
		st.Report = rec
		st.Summary = summary
		st.Failures = failures
		if ready {
			st.State = Ready
		} else {
			st.State = Failed
		}
	})
	r.mu.Lock()
	first := !r.closed
	if first {
		r.closed, r.ready = true, ready
		close(r.outcome)
	}
	r.mu.Unlock()
	if r.notify != nil {
		msg := "STATUS=" + oneLine(status)
		if ready {
			msg = "READY=1\n" + msg
		}
		_ = r.notify(msg)
	}
	if ready {
		return "host recorded: ready"
	}
	return "host recorded: failed"
}

func (r *Recorder) vm() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.VM
}

func isVerified(v proto.Verification) bool {
	return v == proto.VerifiedSignature || v == proto.VerifiedDigest || v == proto.Unverified
}

// clean makes guest-supplied text safe for a status file and log lines
// (shared/termtext: control characters become spaces), cut to max bytes.
func clean(s string, max int) string { return termtext.Clean(s, max) }

// oneLine keeps a STATUS= value on one line and within sd_notify's size.
func oneLine(s string) string { return clean(s, 1000) }
