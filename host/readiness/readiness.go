// Package readiness records what the host learns about a guest's start:
// the vmcred agent's REPORT on a session the host dialed (`vmcred-host
// push` and `run`, package push): the guest has its credentials, verified,
// or names the ones that failed. It keeps it in a status file per VM
// (JSON, mode 0600, names and digest prefixes but never a value) and lets
// `vmcred-host wait` block until the guest is ready or has failed.
//
// Readiness comes only from a session the host dialed: whoever answers on
// the agent's privileged vsock port is guest root, and the report is read
// on that same connection. Nothing a guest process sends to a host socket
// can change it. The file is written by one process per session and
// survives a restart of any host process.
//
// The status folder and file are checked on write and on read (issue 17,
// finding 5): a folder or file another user could write, or owned by
// someone other than this user or root, is refused, so nobody else chooses
// what `wait` reports.
//
// This package is for host code (host/cmd/vmcred-host). It does not log.
package readiness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/host/atomicfile"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/termtext"
)

// DefaultStatusDir is where push and run write and wait reads status files.
const DefaultStatusDir = "/run/vmcred-host"

// maxStatusFile bounds what Read reads: a report of 4096 credentials with
// long error texts stays well under it.
const maxStatusFile = 8 << 20

// MaxFailures bounds the failures a status lists by name; the rest are
// counted (a report holds at most 4096 entries).
const MaxFailures = 64

// State is the VM's readiness.
type State string

// States.
const (
	// Waiting: a session is under way.
	Waiting State = "waiting"
	// Ready: the agent reported every credential verified and exposed.
	Ready State = "ready"
	// Failed: the agent reported a failure, or refused the session.
	Failed State = "failed"
)

// Status is the content of a VM's status file.
type Status struct {
	VM    string `json:"vm"`
	State State  `json:"state"`
	// Summary is one line for humans.
	Summary string `json:"summary"`
	// Failures name each credential that failed and why (at most
	// MaxFailures; FailuresOmitted counts the rest).
	Failures        []string `json:"failures,omitempty"`
	FailuresOmitted int      `json:"failures_omitted,omitempty"`
	// Connect is the address the host dialed.
	Connect string `json:"connect,omitempty"`
	// Generation is the credential set's generation the agent holds.
	Generation uint64 `json:"generation"`
	// PID is the process that wrote the status (push or run), and
	// PIDStart its start time (field 22 of /proc/PID/stat, in clock
	// ticks since boot): with both, Wait tells a writer that died in the
	// Waiting state from one that is still dialing, even if the PID was
	// reused since.
	PID       int       `json:"pid,omitempty"`
	PIDStart  uint64    `json:"pid_start,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	// Session is what the host sent.
	Session *Session `json:"session,omitempty"`
	// Report is the agent's report on that session.
	Report *Report `json:"report,omitempty"`
	// Units is what the session's rotation did to each running service
	// that uses a changed credential (names only).
	Units []UnitFinding `json:"units,omitempty"`
}

// UnitFinding is what a rotation did to one service in the guest.
type UnitFinding struct {
	Unit        string   `json:"unit"`
	Action      string   `json:"action"`
	Credentials []string `json:"credentials"`
	Result      string   `json:"result"`
	OK          bool     `json:"ok"`
	Error       string   `json:"error,omitempty"`
}

// Session records a session's delivery.
type Session struct {
	At          time.Time `json:"at"`
	Attempts    int       `json:"attempts"`
	BootID      string    `json:"boot_id,omitempty"`
	Credentials []string  `json:"credentials"`
	Bytes       int64     `json:"bytes"`
	Acked       bool      `json:"acked"`
}

// Report is the agent's REPORT as received.
type Report struct {
	At           time.Time           `json:"at"`
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

// FromReport builds vm's status from the report the agent sent on a
// session the host dialed.
func FromReport(vm string, rep proto.Report, at time.Time) Status {
	rec := &Report{At: at.UTC(), Outcome: rep.Outcome.String(), Summary: clean(rep.Summary, proto.MaxTextLen), AgentVersion: clean(rep.AgentVersion, proto.MaxVersionLen),
		TimingsMS: map[string]int64{
			"read": rep.Timings.Read.Milliseconds(), "verify": rep.Timings.Verify.Milliseconds(), "fetch": rep.Timings.Fetch.Milliseconds(),
			"write": rep.Timings.Write.Milliseconds(), "total": rep.Timings.Total.Milliseconds(),
		},
		Credentials: make([]CredentialFinding, 0, len(rep.Credentials))}
	st := Status{VM: vm, Report: rec, Generation: rep.Generation, UpdatedAt: at.UTC()}
	verified := 0
	for _, c := range rep.Credentials {
		rec.Credentials = append(rec.Credentials, CredentialFinding{Name: c.Name, Size: c.Size, SHA256Prefix: c.SHA256Prefix,
			Delivery: string(c.Delivery), Verification: string(c.Verification), Error: clean(c.Error, proto.MaxErrorTextLen)})
		switch {
		case c.Error != "":
			if len(st.Failures) < MaxFailures {
				st.Failures = append(st.Failures, fmt.Sprintf("%s: %s (%s)", c.Name, c.Verification, clean(c.Error, proto.MaxErrorTextLen)))
			} else {
				st.FailuresOmitted++
			}
		case isVerified(c.Verification):
			verified++
		}
	}
	acted := 0
	for _, u := range rep.Units {
		f := UnitFinding{Unit: clean(u.Unit, proto.MaxUnitNameLen), Action: u.Action, Credentials: u.Credentials, Result: clean(u.Result, proto.MaxResultLen), OK: u.OK, Error: clean(u.Error, proto.MaxErrorTextLen)}
		if f.Credentials == nil {
			f.Credentials = []string{}
		}
		st.Units = append(st.Units, f)
		if u.OK && u.Action != "none" {
			acted++
		}
		if !u.OK {
			// First, and named: the unit is what failed.
			st.Failures = append([]string{fmt.Sprintf("%s: %s %s (%s)", f.Unit, f.Action, f.Result, f.Error)}, st.Failures...)
			if len(st.Failures) > MaxFailures {
				st.Failures = st.Failures[:MaxFailures]
				st.FailuresOmitted++
			}
		}
	}
	if rep.Outcome == proto.OutcomeReady {
		st.State = Ready
		st.Summary = fmt.Sprintf("guest %s: %s verified (generation %d)", vm, cli.Count(verified, "credential"), rep.Generation)
		if acted > 0 {
			st.Summary += fmt.Sprintf("; %s restarted or reloaded", cli.Count(acted, "consumer unit"))
		}
		return st
	}
	st.State = Failed
	why := clean(rep.Summary, 400)
	if why == "" {
		why = "load failed"
	}
	st.Summary = fmt.Sprintf("guest %s: %s", vm, why)
	if fix := refusalFix(why); fix != "" {
		st.Summary += "; fix: " + fix
	}
	return st
}

// refusalFix is the host's fix for a session the agent refused, matched
// on the manifest package's sentinel texts and the agent's refusal
// phrases (integration tests hold both ends together), or "".
func refusalFix(why string) string {
	switch {
	case strings.Contains(why, manifest.ErrWrongVM.Error()):
		return "give push --vm the name the guest agent was started with (its --vm or /etc/vmcred/vm-name)"
	case strings.Contains(why, manifest.ErrUnknownKey.Error()), strings.Contains(why, manifest.ErrUnsigned.Error()):
		return "the guest does not trust push's --sign-key: install that key's .pub in the guest (agent --trust-key), or sign with the key it trusts"
	case strings.Contains(why, manifest.ErrExpired.Error()):
		return "check the guest's clock, then push again"
	case strings.Contains(why, "not signed for this session"), strings.Contains(why, "is older than the"), strings.Contains(why, manifest.ErrBadSignature.Error()):
		return "push again: each push signs the agent's fresh challenge and the generation after the one it holds"
	}
	return ""
}

func isVerified(v proto.Verification) bool {
	return v == proto.VerifiedSignature || v == proto.VerifiedDigest || v == proto.Unverified
}

// StatusLine is the one line for the host unit's STATUS= and the log.
func (st Status) StatusLine() string {
	s := st.Summary
	if len(st.Failures) > 0 {
		names := make([]string, 0, min(len(st.Failures), 8))
		for _, f := range st.Failures[:min(len(st.Failures), 8)] {
			n, _, _ := strings.Cut(f, ":")
			names = append(names, n)
		}
		s += ": " + strings.Join(names, ", ")
		if more := len(st.Failures) - len(names) + st.FailuresOmitted; more > 0 {
			s += fmt.Sprintf(" and %d more", more)
		}
	}
	return oneLine(s)
}

// Path is the status file of vm in dir.
func Path(dir, vm string) string { return filepath.Join(dir, vm+".json") }

// Write writes st to Path(dir, st.VM) atomically, mode 0600, creating dir
// (0700) if needed. It refuses a folder that is not this user's or that
// others can write (CheckDir).
func Write(dir string, st Status) error {
	if err := credential.ValidateName(st.VM); err != nil {
		return fmt.Errorf("write status: vm: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create status folder: %w", err)
	}
	if err := CheckDir(dir, false); err != nil {
		return fmt.Errorf("write status: %w", err)
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
	if err := CheckDir(dir, true); err != nil {
		return st, fmt.Errorf("read status: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return st, fmt.Errorf("read status: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return st, fmt.Errorf("read status: %w", err)
	}
	if err := checkOwned(path, fi, true); err != nil {
		return st, fmt.Errorf("read status: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return st, fmt.Errorf("read status: %w: %s is not a regular file", ErrUntrusted, path)
	}
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

// DefaultFolderGrace is how long Wait waits for a status folder that does
// not exist: push and run create it as they start, so one still missing
// after that names a folder nothing writes (a mistyped --status-dir).
const DefaultFolderGrace = 30 * time.Second

// ErrNoWriter: the status says a session is under way, but the process
// that wrote it has ended: nothing will ever report.
var ErrNoWriter = errors.New("the process that recorded the session has ended without a report")

// ErrNoFolder: the status folder still does not exist after the grace.
var ErrNoFolder = errors.New("no status folder")

// WaitOptions tune WaitFor. The zero value is usable.
type WaitOptions struct {
	// Poll is how often the file is read (DefaultPoll when 0).
	Poll time.Duration
	// FolderGrace is how long a missing folder is waited for
	// (DefaultFolderGrace when 0; negative: as long as ctx allows).
	FolderGrace time.Duration
	// Alive says whether the writer of a Waiting status still runs
	// (ProcAlive on "/proc" when nil).
	Alive func(pid int, start uint64) bool
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Wait is WaitFor with the default options and poll.
func Wait(ctx context.Context, dir, vm string, poll time.Duration) (Status, error) {
	return WaitFor(ctx, dir, vm, WaitOptions{Poll: poll})
}

// WaitFor reads vm's status file every poll until its state is Ready or
// Failed, and returns it. What cannot fix itself ends it at once:
//   - a Waiting status whose writer (PID and start time) has ended:
//     ErrNoWriter;
//   - a folder still missing after FolderGrace: ErrNoFolder;
//   - a file or folder that fails CheckDir's rules: ErrUntrusted.
//
// A missing file in an existing folder, or a half-written one, is waited
// for: push may not have started yet (the NixOS module creates the folder
// with the VM, and push starts beside it). It returns ctx's error,
// wrapped, when ctx ends first.
func WaitFor(ctx context.Context, dir, vm string, o WaitOptions) (Status, error) {
	if o.Poll <= 0 {
		o.Poll = DefaultPoll
	}
	if o.FolderGrace == 0 {
		o.FolderGrace = DefaultFolderGrace
	}
	if o.Alive == nil {
		o.Alive = func(pid int, start uint64) bool { return ProcAlive("/proc", pid, start) }
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	begin := o.Now()
	t := time.NewTicker(o.Poll)
	defer t.Stop()
	var last error
	for {
		st, err := Read(dir, vm)
		switch {
		case err == nil && (st.State == Ready || st.State == Failed):
			return st, nil
		case err == nil && st.State == Waiting && st.PID > 0 && !o.Alive(st.PID, st.PIDStart):
			return st, fmt.Errorf("vm %s: %w (pid %d; status in %s): see its log, then start push or run again", vm, ErrNoWriter, st.PID, Path(dir, vm))
		case errors.Is(err, ErrUntrusted):
			return st, err
		case err != nil && errors.Is(err, fs.ErrNotExist):
			if _, serr := os.Lstat(dir); errors.Is(serr, fs.ErrNotExist) && o.FolderGrace > 0 && o.Now().Sub(begin) >= o.FolderGrace {
				return st, fmt.Errorf("vm %s: %w %s after %v: push and run create it as they start; check --status-dir, or start push or run first", vm, ErrNoFolder, dir, o.FolderGrace)
			}
		case err != nil:
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

// ProcStart is the start time of process pid (field 22 of
// proc/PID/stat: clock ticks after boot), read under procRoot ("/proc").
func ProcStart(procRoot string, pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces
	// or ')': the fields after it start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s/%d/stat: no command field", procRoot, pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("%s/%d/stat: %d fields, want at least 22", procRoot, pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// ProcAlive reports whether process pid runs and, when start is not 0,
// is the one that started at start (not a later process given the same
// PID). A process this user may not look at (EACCES) counts as alive:
// only a proven end stops Wait early.
func ProcAlive(procRoot string, pid int, start uint64) bool {
	got, err := ProcStart(procRoot, pid)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false
	case err != nil:
		return true
	}
	return start == 0 || got == start
}

// Started is the Waiting status push and run record as a session starts:
// this process's PID and start time, so that Wait can tell when it died.
func Started(vm, connect string, at time.Time, pid int, procRoot string) Status {
	st := Status{VM: vm, State: Waiting, Connect: connect, PID: pid, UpdatedAt: at.UTC(),
		Summary: fmt.Sprintf("guest %s: dialing the agent at %s", vm, connect)}
	st.PIDStart, _ = ProcStart(procRoot, pid)
	return st
}

// HostFailed is the Failed status push and run record when the session
// ended without the guest's report (a timeout, a refused dial, a source
// the host could not read): msg is the host's own error, said once.
func HostFailed(vm, connect string, at time.Time, msg string) Status {
	return Status{VM: vm, State: Failed, Connect: connect, UpdatedAt: at.UTC(), Summary: oneLine(msg)}
}

// Message is the text wait and push print for a status: the summary and
// each failure not already said in it, once.
func (st Status) Message() string {
	msg := st.Summary
	var extra []string
	for _, f := range st.Failures {
		if !strings.Contains(msg, f) && !strings.Contains(msg, failureText(f)) {
			extra = append(extra, f)
		}
	}
	if len(extra) > 0 {
		msg += ": " + strings.Join(extra, "; ")
	}
	if st.FailuresOmitted > 0 {
		msg += fmt.Sprintf(" (and %d more)", st.FailuresOmitted)
	}
	return msg
}

// failureText is a failure's reason without its "NAME: verification (…)"
// frame.
func failureText(f string) string {
	_, rest, ok := strings.Cut(f, " (")
	if !ok {
		return f
	}
	return strings.TrimSuffix(rest, ")")
}

// ErrUntrusted: a status folder or file that another user could have
// written.
var ErrUntrusted = errors.New("status file not trusted")

// CheckDir checks a status folder: a real folder, owned by this user (or,
// reading, root), and not writable by group or others — anyone who could
// write there could choose what `wait` reports (issue 17, finding 5).
func CheckDir(dir string, reading bool) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a folder", ErrUntrusted, dir)
	}
	return checkOwned(dir, fi, reading)
}

// CheckDirIfExists is CheckDir for a folder Write would create: nil when
// it does not exist yet.
func CheckDirIfExists(dir string) error {
	err := CheckDir(dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// checkOwned refuses a file or folder that group or others can write, or
// that belongs to another user (root is accepted when reading: wait may
// run as a user while root's push writes).
func checkOwned(path string, fi fs.FileInfo, reading bool) error {
	if m := fi.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o: other users can write it; chmod go-w it", ErrUntrusted, path, m)
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid := os.Geteuid()
	if int(sys.Uid) == uid || (reading && sys.Uid == 0) {
		return nil
	}
	return fmt.Errorf("%w: %s belongs to uid %d, not to this user (uid %d)", ErrUntrusted, path, sys.Uid, uid)
}

// clean makes guest-supplied text safe for a status file and log lines
// (shared/termtext: control characters become spaces), cut to max bytes.
func clean(s string, max int) string { return termtext.Clean(s, max) }

// oneLine keeps a STATUS= value on one line and within sd_notify's size.
func oneLine(s string) string { return clean(s, 1000) }
