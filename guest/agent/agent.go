// Package agent is the guest boot service behind `vmcred-guest agent` and
// `vmcred-guest load`: it reads the credentials the host passed in firmware
// (firmware.Read), accepts host-dialed sessions on a privileged vsock port
// for the rest (Agent.Serve, DESIGN §8), checks everything against one
// policy, writes what passed to the credstore in one all-or-nothing step,
// and records a report with no values in the status folder.
//
// The steps are plain functions over injected resources (an fs.FS for the
// firmware, directories for the stores, a net.Listener for sessions) so
// tests need no root and no VM. Guest packages only.
package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// ManifestName is the credential that carries vmcred's manifest. It is never
// exposed in the credstore: it describes the others.
const ManifestName = "vmcred.manifest"

// Defaults for the production paths.
const (
	DefaultCredstore = "/run/credstore"
	DefaultStatusDir = "/run/vmcred"
	StatusFile       = "status.json"
	stateFile        = "credstore.state"
)

// ManifestFile is the copy of the manifest the agent accepted from the
// last host session, kept in the status folder next to StatusFile for the
// debug commands; see saveManifest.
const ManifestFile = "manifest"

// MaxManifestFile bounds a read of ManifestFile. The largest manifest is
// MaxEntries entries of at most 299 bytes each (a 255-byte name, a varint
// size, a SHA-256, an attribute byte) plus a header of under 1 KiB:
// about 1.2 MiB.
const MaxManifestFile = 2 << 20

// Config is what one load does.
type Config struct {
	// Root is the file system firmware is read from ("/" in production).
	Root fs.FS
	// Firmware says which firmware sources to read.
	Firmware firmware.Options
	// Credstore is the folder credentials are exposed in.
	Credstore string
	// StatusDir holds the status file and the credstore's state file.
	StatusDir string
	// AllowPersistent accepts a credstore that is not on tmpfs or ramfs.
	AllowPersistent bool
	// AllowUnverified accepts credentials with no manifest to check them
	// against (guests fed by other tools).
	AllowUnverified bool
	// TrustKeys, when any are given, make a valid signature by one of them
	// required.
	TrustKeys []ed25519.PublicKey
	// VM is this VM's name: the manifest must have been issued for it.
	// Empty refuses every manifest unless AllowAnyVM is set: a manifest
	// signed for another VM must not pass here (issue 17, finding 10).
	// Sessions always need it.
	VM string
	// AllowAnyVM accepts a manifest issued for any VM when VM is empty
	// (--allow-any-vm): for images that cannot know their VM's name.
	AllowAnyVM bool
	// SystemCredentials is the folder systemd imported credentials into
	// (/run/credentials/@system), for the cross-check; "" skips it.
	SystemCredentials string
	// Version is the agent's version, recorded in the report.
	Version string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Outcomes of a load.
const (
	OutcomeReady  = "ready"
	OutcomeFailed = "failed"
)

// CredentialResult is what happened to one credential. It has no value.
type CredentialResult struct {
	Name         string `json:"name"`
	Size         int    `json:"size"`
	SHA256       string `json:"sha256"`
	Source       string `json:"source"`
	Prefix       string `json:"prefix,omitempty"`
	Verification string `json:"verification"`      // "signature", "digest", "unverified", or what was wrong
	Exposed      string `json:"exposed,omitempty"` // the credstore file written
	// Served is the file a service's LoadCredential=NAME gets: systemd
	// searches /run/credentials/@system before /run/credstore, so a copy
	// systemd imported itself wins.
	Served   string `json:"served,omitempty"`
	Delivery string `json:"delivery,omitempty"` // as the manifest says
	Problem  string `json:"problem,omitempty"`
}

// Skipped is an OEM string or entry that was not taken as a credential.
type Skipped struct {
	Index  int    `json:"index"`
	Source string `json:"source"`
	Name   string `json:"name,omitempty"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
	// Count, when above 0, stands for that many strings skipped for
	// Reason and not named (index -1): only the first
	// oemstring.MaxSkipped are, so a hostile table cannot make the report
	// grow with every string it holds.
	Count int `json:"count,omitempty"`
}

// Report is the outcome of one load: what the status file holds, what the
// debug command shows and (later) what the host is told. Never a value.
type Report struct {
	Outcome  string   `json:"outcome"`
	Summary  string   `json:"summary"`
	Problems []string `json:"problems,omitempty"`
	Policy   string   `json:"policy"` // PolicySignature, PolicyDigest or PolicyUnverified
	// ManifestSource is where the manifest came from: ManifestFromFirmware,
	// or ManifestFromSession (a host-dialed session).
	ManifestSource string `json:"manifest_source,omitempty"`
	KeyID          string `json:"key_id,omitempty"`
	// SignedBy is the key ID of a signature that was present but not
	// checked (no trust key given): the load relied on digests only.
	SignedBy string `json:"signed_by,omitempty"`
	VM       string `json:"vm,omitempty"`
	// Generation is the manifest's generation (the credential set's).
	Generation  uint64             `json:"generation,omitempty"`
	NotAfter    *time.Time         `json:"not_after,omitempty"`
	SystemCheck []SystemNote       `json:"systemd_check,omitempty"`
	Credstore   string             `json:"credstore"`
	Credentials []CredentialResult `json:"credentials"`
	Skipped     []Skipped          `json:"skipped"`
	Sources     []firmware.Status  `json:"sources"`
	Store       *credstore.Result  `json:"store,omitempty"`
	// Rotation is what this session did as a rotation (it replaced a set
	// the agent had exposed): nil for a boot load and the first session.
	Rotation *Rotation `json:"rotation,omitempty"`
	// Fetch is the host session that brought the manifest, if one did.
	Fetch     *ChannelStep `json:"fetch,omitempty"`
	Version   string       `json:"agent_version"`
	StartedAt time.Time    `json:"started_at"`
	Timings   Timings      `json:"timings_ms"`
}

// Timings are the durations of the load's steps, in milliseconds.
type Timings struct {
	Read   float64 `json:"read"`
	Verify float64 `json:"verify"`
	Fetch  float64 `json:"fetch"`
	Write  float64 `json:"write"`
	Total  float64 `json:"total"`
}

// Failure is a load that ended in a policy or verification failure (exit 1)
// rather than an I/O error. Its text names every credential involved.
type Failure struct{ Problems []string }

func (f *Failure) Error() string {
	if len(f.Problems) == 1 {
		return f.Problems[0]
	}
	return fmt.Sprintf("%d problems: %s", len(f.Problems), joinProblems(f.Problems))
}

func joinProblems(p []string) string {
	s := ""
	for i, x := range p {
		if i > 0 {
			s += "; "
		}
		s += x
	}
	return s
}

// Load is LoadContext without a context.
func Load(cfg Config) (Report, error) { return LoadContext(context.Background(), cfg) }

// LoadContext runs one firmware load (`vmcred-guest load`, and the agent at
// boot). The report is returned (and written to the status folder, when
// one is set) whether the load succeeded or not; the error's exit code
// follows DESIGN §7: 1 for a policy or verification failure, 3 when a
// source or the store could not be read or written. A manifest that lists
// credentials for the channel cannot be completed from firmware: the load
// fails naming them (the agent waits for the host's session instead).
func LoadContext(_ context.Context, cfg Config) (Report, error) {
	rep, _, err := run(cfg, nil)
	return rep, err
}

// run is one load: from firmware alone (sess nil), or with a host
// session's manifest and values. It writes the status file and returns the
// verification result for the caller (the agent keeps the generation and
// the changed names).
func run(cfg Config, sess *sessionInput) (Report, verified, error) {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	rep := Report{Outcome: OutcomeFailed, Policy: PolicyUnverified, Credstore: cfg.Credstore, Version: cfg.Version, StartedAt: start.UTC(), Credentials: []CredentialResult{}, Skipped: []Skipped{}}
	if sess != nil {
		rep.Fetch = sess.step
		rep.Timings.Fetch = ms(sess.took)
	}
	v, err := load(cfg, now, &rep, sess)
	rep.Timings.Total = ms(now().Sub(start))
	if err != nil {
		var f *Failure
		if errors.As(err, &f) {
			rep.Problems = f.Problems
		} else {
			rep.Problems = append(rep.Problems, err.Error())
		}
		rep.Outcome = OutcomeFailed
		rep.Summary = "load failed: " + err.Error()
	}
	if cfg.StatusDir != "" {
		if werr := WriteStatus(cfg.StatusDir, rep); werr != nil && err == nil {
			err = cli.WithCode(cli.ExitIO, werr)
		}
	}
	return rep, v, err
}

func load(cfg Config, now func() time.Time, rep *Report, sess *sessionInput) (verified, error) {
	if cfg.StatusDir != "" {
		// Before anything is read: the credstore's state file and the
		// report go there.
		if err := CheckStatusDir(cfg.StatusDir); err != nil {
			return verified{}, cli.WithCode(cli.ExitIO, err)
		}
	}
	v, err := readVerify(cfg, now, rep, sess)
	if err != nil {
		return v, err
	}

	t2 := now()
	if err := saveManifest(cfg.StatusDir, rep.ManifestSource, v); err != nil {
		return v, cli.WithCode(cli.ExitIO, err)
	}
	// Channel credentials are not bound by systemd's 1 MiB import limit
	// (firmware ones are, by the parser); the manifest bounds them.
	store, err := credstore.Open(cfg.Credstore, credstore.Options{AllowPersistent: cfg.AllowPersistent, StatePath: filepath.Join(cfg.StatusDir, stateFile), MaxSize: manifest.MaxEntrySize})
	if err != nil {
		if errors.Is(err, credstore.ErrNotInMemory) {
			return v, cli.WithCode(cli.ExitFailure, err)
		}
		return v, cli.WithCode(cli.ExitIO, err)
	}
	defer store.Close()
	var res credstore.Result
	if sess != nil && sess.rotate {
		// A rotation: all or nothing, one directory exchange; unchanged
		// files keep their inode (credstore/ROTATION.md).
		var rot credstore.Rotation
		rot, err = store.Rotate(v.expose)
		if err == nil || rot.Changes() != nil || rot.Unchanged != nil {
			rep.Rotation = &Rotation{To: v.m.Generation, At: now().UTC(), Added: rot.Added, Changed: rot.Changed, Unchanged: rot.Unchanged, Removed: rot.Removed, Units: []UnitOutcome{}}
			res = credstore.Result{Written: slices.Concat(rot.Added, rot.Changed), Replaced: rot.Changed, Removed: rot.Removed, Kept: rot.Kept}
			if err != nil {
				// The new set is in place; only removing the old one failed.
				rep.Problems = append(rep.Problems, err.Error())
				err = nil
			}
		}
	} else {
		res, err = store.Replace(v.expose)
	}
	rep.Timings.Write = ms(now().Sub(t2))
	if err != nil {
		return v, cli.WithCode(cli.ExitIO, err)
	}
	rep.Store = &res
	v.store = res
	for i := range rep.Credentials {
		c := &rep.Credentials[i]
		if c.Problem != "" {
			continue
		}
		c.Exposed = filepath.Join(cfg.Credstore, c.Name)
		if c.Served == "" {
			c.Served = c.Exposed
		}
	}
	rep.Outcome = OutcomeReady
	rep.Summary = summary(len(v.expose), rep)
	return v, nil
}

// readVerify reads the firmware, parses it with systemd's rules and
// verifies what arrived, with the session's manifest and values when there
// is a session: everything a load does before the credstore write. It
// returns what to expose; problems are a *Failure.
func readVerify(cfg Config, now func() time.Time, rep *Report, sess *sessionInput) (verified, error) {
	t0 := now()
	fw, err := firmware.Read(cfg.Root, cfg.Firmware)
	rep.Sources = fw.Sources
	rep.Timings.Read = ms(now().Sub(t0))
	if errors.Is(err, firmware.ErrNoSource) && sess != nil {
		// No firmware at all (Firecracker): the session brings everything.
		err = nil
	}
	if err != nil {
		return verified{}, cli.WithCode(cli.ExitIO, err)
	}
	for _, s := range fw.Parsed.Skipped {
		rep.Skipped = append(rep.Skipped, Skipped{Index: s.Index, Source: s.Source, Name: s.Name, Reason: string(s.Reason), Detail: s.Detail, Count: s.Count})
	}
	var problems []string
	for _, s := range fw.Sources {
		if s.Fault != "" {
			problems = append(problems, "source damaged: "+s.Fault)
		}
	}

	// The delivered credentials, by name; the manifest is kept apart.
	var manifestEntry *oemstring.Entry
	delivered := make([]oemstring.Entry, 0, len(fw.Parsed.Entries))
	for i, e := range fw.Parsed.Entries {
		if e.Name == ManifestName {
			manifestEntry = &fw.Parsed.Entries[i]
			continue
		}
		delivered = append(delivered, e)
	}
	rep.ManifestSource = ""
	if manifestEntry != nil {
		rep.ManifestSource = ManifestFromFirmware
	}
	if sess != nil {
		// The session's manifest is the one that counts; a firmware
		// manifest only vouched for the boot-time load.
		manifestEntry = &oemstring.Entry{Name: ManifestName, Value: credential.NewSecret(sess.envelope), Source: SourceChannel}
		rep.ManifestSource = ManifestFromSession
	}

	t1 := now()
	v, err := verify(cfg, now(), manifestEntry, delivered, rep, sess)
	rep.Timings.Verify = ms(now().Sub(t1))
	if err != nil {
		return verified{}, err
	}
	problems = append(problems, v.problems...)
	if len(problems) > 0 {
		return v, cli.WithCode(cli.ExitFailure, &Failure{Problems: problems})
	}
	return v, nil
}

// summary is the one line for STATUS= and the log, e.g.
// "3 credentials verified (ed25519 key 3f2a…)".
func summary(n int, rep *Report) string {
	noun := "credentials"
	if n == 1 {
		noun = "credential"
	}
	switch rep.Policy {
	case PolicySignature:
		return fmt.Sprintf("%d %s verified (ed25519 key %s)", n, noun, rep.KeyID)
	case PolicyDigest:
		if rep.SignedBy != "" {
			return fmt.Sprintf("%d %s verified (digests only: the signature by ed25519 key %s was not checked, no trust key given)", n, noun, rep.SignedBy)
		}
		return fmt.Sprintf("%d %s verified (digests, unsigned manifest)", n, noun)
	}
	return fmt.Sprintf("%d %s loaded unverified", n, noun)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// WriteStatus writes the report to dir/status.json atomically, mode 0600:
// it holds no value, but names and digests are root's business. dir must
// pass CheckStatusDir (it is created 0700 if missing).
func WriteStatus(dir string, rep Report) error {
	if err := CheckStatusDir(dir); err != nil {
		return err
	}
	sort.SliceStable(rep.Credentials, func(i, j int) bool { return rep.Credentials[i].Name < rep.Credentials[j].Name })
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, StatusFile), append(b, '\n'), 0o600)
}

// ErrUnsafeStatusDir means the status folder could be written by someone
// other than this agent: whoever can write it can forge the report that
// `vmcred-guest status` shows, or plant files where the agent writes.
var ErrUnsafeStatusDir = errors.New("status folder is not private to the agent")

// CheckStatusDir makes sure dir is a folder only this process's user can
// write, as credstore.Open checks the credstore: it creates dir (and
// missing parents) with mode 0700 if it is missing, and refuses a symlink,
// a non-folder, a folder owned by another user and one that gives group or
// others any access. A folder it did not create is never tightened
// silently: it may already hold files someone else planted.
func CheckStatusDir(dir string) error {
	fi, err := os.Lstat(dir)
	created := false
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create status folder: %w", err)
		}
		created = true
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("status folder: %w", err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("status folder %s: %w: it is a symlink (use the real path)", dir, ErrUnsafeStatusDir)
	case !fi.IsDir():
		return fmt.Errorf("status folder %s: %w: not a folder", dir, ErrUnsafeStatusDir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		owner := "an unknown user"
		if ok {
			owner = fmt.Sprintf("uid %d", st.Uid)
		}
		return fmt.Errorf("status folder %s: %w: owned by %s, not by this agent (uid %d)", dir, ErrUnsafeStatusDir, owner, os.Geteuid())
	}
	if created {
		// MkdirAll's mode went through the umask; make it exactly 0700.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("status folder: %w", err)
		}
		return nil
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("status folder %s: %w: mode %#o gives group or others access (chmod 0700 %s, or remove it and let vmcred create it)", dir, ErrUnsafeStatusDir, perm, dir)
	}
	return nil
}

// ReadStatus reads the report the last load wrote.
func ReadStatus(dir string) (Report, error) {
	var rep Report
	b, err := os.ReadFile(filepath.Join(dir, StatusFile))
	if err != nil {
		return rep, fmt.Errorf("read status: %w", err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("decode %s: %w", filepath.Join(dir, StatusFile), err)
	}
	return rep, nil
}

// writeFileAtomic writes path through a temporary file with a random name,
// created with O_EXCL (os.CreateTemp), so a file or symlink planted under a
// predictable name is never opened. Temporary files an earlier, killed
// write left (the folder is private, so they are ours) are removed first.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir, base := filepath.Split(path)
	pattern := "." + base + ".*.tmp"
	if stale, err := filepath.Glob(filepath.Join(dir, pattern)); err == nil {
		for _, f := range stale {
			_ = os.Remove(f)
		}
	}
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return nil
}
