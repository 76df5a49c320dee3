package debug

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// Policy is what the live sources are checked against: the same inputs as
// `vmcred-guest load`'s policy flags.
type Policy struct {
	// TrustKeys, when any are given, make a signature by one of them
	// required.
	TrustKeys []ed25519.PublicKey
	// TrustFrom says where the keys came from ("/etc/vmcred/trusted.d"),
	// for messages; "" when none were given.
	TrustFrom string
	// VM, when set, must match the manifest's VM name; without it the
	// manifest is refused unless AllowAnyVM, as the agent refuses it.
	VM         string
	AllowAnyVM bool
	// AllowUnverified accepts credentials without a manifest.
	AllowUnverified bool
}

// Verification is the output of `vmcred-guest verify`.
type Verification struct {
	// OK is true when every check passed: exit code 0.
	OK bool `json:"ok"`
	// Result is "ok" (exit 0), "failed" (exit 1: a check failed) or
	// "incomplete" (exit 3: something could not be read).
	Result string `json:"result"`
	// Policy is how the credentials were checked: "signature", "digest",
	// "unverified", or "refused" (the manifest was not accepted; rows then
	// compare against its unverified digests) or "none" (no manifest).
	Policy string `json:"policy"`
	// ManifestFrom is where the manifest came from: ManifestFromFirmware,
	// or ManifestFromSaved (the copy the last load fetched by channel and
	// saved, used only when firmware holds none); "" without a manifest.
	ManifestFrom string `json:"manifest_from,omitempty"`
	// ManifestFile is the saved copy read, when ManifestFrom is "saved".
	ManifestFile string     `json:"manifest_file,omitempty"`
	KeyID        string     `json:"key_id,omitempty"`
	TrustKeys    int        `json:"trust_keys"`
	TrustFrom    string     `json:"trust_from,omitempty"`
	VM           string     `json:"vm,omitempty"`
	IssuedAt     *time.Time `json:"issued_at,omitempty"`
	NotAfter     *time.Time `json:"not_after,omitempty"`
	Generation   uint64     `json:"generation,omitempty"`
	Credstore    string     `json:"credstore"`
	// Credentials has one row per manifest entry, then the unlisted ones.
	Credentials []VerifiedCredential `json:"credentials"`
	Skipped     []Skipped            `json:"skipped"`
	Sources     []firmware.Status    `json:"sources"`
	Findings    []Finding            `json:"findings"`

	in Inspector
}

// VerifiedCredential is one credential checked in every place it lives.
type VerifiedCredential struct {
	Name string `json:"name"`
	// Size and SHA256 are the manifest's (the firmware's without one).
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	Delivery string `json:"delivery,omitempty"`
	Source   string `json:"source,omitempty"`
	Prefix   string `json:"prefix,omitempty"`
	// Firmware: "ok", "missing", "mismatch", "unlisted", or "channel" (a
	// channel credential, not fetched again).
	Firmware string `json:"firmware"`
	// Credstore: "ok", "missing", "mismatch", "unreadable", or "-" (not
	// expected there).
	Credstore string `json:"credstore"`
	// Systemd is the copy in /run/credentials/@system: "match",
	// "truncated", "differs", "dropped" (systemd should have imported it),
	// "absent" or "n/a" (no @system folder).
	Systemd string `json:"systemd"`
	// Served is the file LoadCredential=NAME picks, "" when none.
	Served string `json:"served,omitempty"`
	// ServedStatus: "ok", "mismatch", "none", or "-" (not checked).
	ServedStatus string `json:"served_status"`
	OK           bool   `json:"ok"`
}

// Verify checks the live firmware sources against the manifest and policy
// as `vmcred-guest load` does, and then every credstore file, systemd's own
// copies and the file LoadCredential= picks against the manifest's
// digests. It writes nothing. fwErr is firmware.Read's error.
//
// The manifest is the live firmware's; when firmware holds none, the copy
// the agent saved in in.StatusDir from the host's last session
// (findManifest). That copy gets the same checks as a firmware manifest,
// signature first, and trust keys are required for it as the agent
// requires them for sessions. The error
// carries exit code 1 for a verification failure and 3 when something
// could not be read (a failure found elsewhere wins: it is certain).
//
// The manifest and what firmware delivered go through agent.Check, the
// policy the agent itself applies, so verify cannot pass what the agent
// refuses or the reverse; verify adds only where each credential is now.
func Verify(in Inspector, fw firmware.Report, fwErr error, pol Policy) (Verification, error) {
	v := Verification{Credstore: in.Credstore, Credentials: []VerifiedCredential{}, Skipped: []Skipped{}, Sources: fw.Sources,
		TrustKeys: len(pol.TrustKeys), TrustFrom: pol.TrustFrom, Policy: "none", Result: "incomplete", in: in}
	v.Skipped = append(v.Skipped, fromParsed(fw.Parsed.Skipped)...)
	var fds []Finding
	add := func(f ...Finding) { fds = append(fds, f...) }
	add(sourceFindings(fw.Sources)...)
	add(skippedFindings(v.Skipped)...)
	lm := findManifest(in, fw, fwErr)
	add(lm.findings...)
	if fwErr != nil && lm.from == ManifestFromSaved {
		// No firmware source at all, and the last load took its manifest
		// by channel: no firmware is expected (Firecracker has none), so
		// nothing is said about it.
		fwErr = nil
	}
	if fwErr != nil {
		if errors.Is(fwErr, firmware.ErrNoSource) {
			add(Finding{Code: CodeDMIMissing, Severity: SeverityError, Message: "no firmware credential source and no manifest from a host session: nothing to verify", Fix: fixDMISysfs})
		} else {
			add(Finding{Code: CodeSourceUnreadable, Severity: SeverityError, Message: fwErr.Error(), Fix: fixDMISysfs})
		}
		v.Findings = sortFindings(fds)
		return v, cli.WithCode(cli.ExitIO, fmt.Errorf("read firmware: %w", fwErr))
	}

	me := lm.entry
	v.ManifestFrom = lm.from
	if lm.from == ManifestFromSaved {
		v.ManifestFile = lm.file
	}
	delivered := map[string]oemstring.Entry{}
	var order []string
	for _, e := range fw.Parsed.Entries {
		if e.Name == agent.ManifestName {
			continue
		}
		delivered[e.Name] = e
		order = append(order, e.Name)
	}

	folders := in.scan()
	store := in.scanOne(in.Credstore)
	for _, f := range folders {
		if f.dir == in.Credstore {
			store = f
		}
	}
	storeSums := map[string]digest{}
	if store.exists && store.err == nil {
		names := make([]string, 0, len(store.files))
		for n := range store.files {
			names = append(names, n)
		}
		slices.Sort(names)
		storeSums = hashAll(in.real(store.dir), names)
	}
	switch {
	case !store.exists:
		add(Finding{Code: CodeCredstoreMissing, Severity: SeverityError,
			Message: fmt.Sprintf("the credstore %s does not exist: no load has exposed anything in this boot", store.dir),
			Fix:     "run `systemctl status vmcred-guest`; once the load succeeds it creates and fills it"})
	default:
		add(storeFindings(store, nil)...)
	}
	systemDir := ""
	if in.SystemCredentials != "" {
		if i := slices.IndexFunc(folders, func(f folder) bool { return f.dir == in.SystemCredentials }); i >= 0 && folders[i].exists {
			systemDir = in.SystemCredentials
		} else {
			add(Finding{Code: CodeSystemdAbsent, Severity: SeverityInfo,
				Message: in.SystemCredentials + " is missing: systemd imported no credentials (older than 252, or systemd.import_credentials=no), so the credstore copies are the ones services get",
				Fix:     "nothing to do"})
		}
	}

	// check fills the credstore, systemd and served columns of one row
	// against the digest want.
	check := func(r *VerifiedCredential, want string, size uint64, value *oemstring.Entry, inStore bool) {
		r.Credstore = "-"
		if inStore {
			d, ok := storeSums[r.Name]
			switch {
			case !store.exists:
				r.Credstore = "missing" // one credstore-missing finding says it
			case store.err != nil:
				r.Credstore = "unreadable"
			case !ok:
				r.Credstore = "missing"
			case d.err != nil:
				r.Credstore = "unreadable"
				add(fileFinding(r.Name, filepath.Join(store.dir, r.Name), d.err))
			case d.sum == want:
				r.Credstore = "ok"
			default:
				r.Credstore = "mismatch"
				add(Finding{Code: CodeCredstoreMismatch, Severity: SeverityError, Credential: r.Name,
					Message: fmt.Sprintf("%s (%d bytes) is not what the manifest lists (%d bytes, sha256 %s…)", filepath.Join(store.dir, r.Name), d.size, size, short(want)),
					Fix:     fixRewrite + "; find what else writes to the credstore"})
			}
			if r.Credstore == "missing" && r.Firmware != "missing" && store.exists {
				add(Finding{Code: CodeCredstoreFileMissing, Severity: SeverityError, Credential: r.Name,
					Message: fmt.Sprintf("it arrived, but %s has no file of that name", store.dir),
					Fix:     "the last load failed or something removed the file: see `vmcred-guest status`; then " + fixRewrite})
			}
		}

		r.Systemd = "n/a"
		systemdNoted := false
		if systemDir != "" {
			got, sysSize, err := agent.ReadFileCapped(in.real(filepath.Join(systemDir, r.Name)), int64(size)+1)
			systemdSees := value != nil && (value.Prefix == oemstring.PrefixText || value.Prefix == oemstring.PrefixBinary || value.Source == firmware.SourceFwCfg)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				r.Systemd = "absent"
				if systemdSees {
					r.Systemd = "dropped"
				}
			case err != nil:
				r.Systemd = "unreadable"
				add(fileFinding(r.Name, filepath.Join(systemDir, r.Name), err))
			case sha(got) == want && uint64(sysSize) == size:
				r.Systemd = "match"
			case value != nil && uint64(len(got)) < size && bytes.HasPrefix(value.Value.Reveal(), got):
				r.Systemd = "truncated"
			default:
				r.Systemd = "differs"
			}
			if f, ok := systemdFinding(r.Name, r.Systemd, size, sysSize, systemDir); ok {
				add(f)
				systemdNoted = f.Severity == SeverityError
			}
		}

		r.ServedStatus = "none"
		if i := served(folders, r.Name); i >= 0 {
			r.Served = filepath.Join(folders[i].dir, r.Name)
			d := hashFile(in.real(r.Served))
			switch {
			case d.err != nil:
				r.ServedStatus = "unreadable"
				if folders[i].dir != store.dir && folders[i].dir != systemDir {
					add(fileFinding(r.Name, r.Served, d.err))
				}
			case d.sum == want:
				r.ServedStatus = "ok"
			default:
				r.ServedStatus = "mismatch"
				if !systemdNoted && r.Credstore != "mismatch" {
					add(servedMismatch(r.Name, r.Served, d.size, filepath.Join(store.dir, r.Name)))
				}
			}
		} else if r.Firmware != "missing" && r.Credstore != "missing" && store.exists {
			add(Finding{Code: CodeServedNone, Severity: SeverityError, Credential: r.Name,
				Message: fmt.Sprintf("no folder on the search path holds it, so LoadCredential=%s gets nothing", r.Name),
				Fix:     fixRewrite})
		}
		r.OK = (r.Firmware == "ok" || r.Firmware == "channel") && (r.Credstore == "ok" || r.Credstore == "-") && r.ServedStatus == "ok"
	}

	var firmwareCreds []oemstring.Entry
	for _, n := range order {
		firmwareCreds = append(firmwareCreds, delivered[n])
	}
	res := lm.check(pol, in.now(), firmwareCreds)
	rows := res.Credentials
	switch {
	case me == nil && res.Policy == "":
		for _, p := range res.ManifestProblems {
			f := manifestFinding(p.Error(), pol.TrustFrom)
			if len(pol.TrustKeys) > 0 {
				f.Message = "no " + agent.ManifestName + " credential arrived while trust keys are set: nothing can be verified"
			}
			add(f)
		}
		rows = nil
	case me == nil:
		v.Policy = agent.PolicyUnverified
	default:
		v.KeyID = res.KeyID
		switch {
		case res.Refused != nil:
			v.Policy = "refused"
			rows = res.Unverified
		case res.Trusted:
			v.Policy = agent.PolicySignature
		default:
			v.Policy = agent.PolicyDigest
			if res.KeyID != "" {
				add(Finding{Code: CodeNoTrustKeys, Severity: SeverityWarning, Credential: agent.ManifestName,
					Message: fmt.Sprintf("signed by ed25519 key %s, but no trust keys were given, so only the digests were checked", res.KeyID),
					Fix:     "pass --trust-key " + DefaultTrustDir + " (the folder vmcred-guest.service trusts) to check the signature too"})
			}
		}
		for _, p := range res.ManifestProblems {
			add(lm.finding(p, pol.TrustFrom))
		}
		if m := res.Manifest; m != nil {
			v.VM, v.Generation = m.VM, m.Generation
			v.IssuedAt = ptr(m.IssuedAt.UTC())
			if !m.NotAfter.IsZero() {
				v.NotAfter = ptr(m.NotAfter.UTC())
			}
		}
	}
	listed := map[string]bool{}
	for _, c := range rows {
		if c.Verdict == agent.VerdictNotInManifest {
			continue
		}
		listed[c.Name] = true
		r := VerifiedCredential{Name: c.Name, Size: int64(c.Size), SHA256: hex.EncodeToString(c.SHA256[:]), Delivery: c.Delivery, Firmware: "ok"}
		if c.Value != nil {
			r.Source, r.Prefix = c.Value.Source, c.Value.Prefix
		}
		switch c.Verdict {
		case agent.VerdictMismatch:
			r.Firmware = "mismatch"
			add(mismatchFinding(c.Name, strings.TrimPrefix(c.Problem, fmt.Sprintf("credential %q: ", c.Name))))
			// The row compares with the manifest's digest.
			if ent, ok := res.Manifest.Lookup(c.Name); ok {
				r.Size, r.SHA256 = int64(ent.Size), hex.EncodeToString(ent.SHA256[:])
			}
		case agent.VerdictAwaitingSession:
			r.Firmware = "channel"
		case agent.VerdictMissing:
			r.Firmware = "missing"
			add(missingFinding(c.Name, c.Size, c.Delivery))
		}
		check(&r, r.SHA256, uint64(r.Size), c.Value, true)
		v.Credentials = append(v.Credentials, r)
	}
	for _, n := range order {
		if listed[n] {
			continue
		}
		e := delivered[n]
		sum := e.Value.SHA256()
		// Not vmcred's to verify; the policy says whether it fails the set.
		fails := slices.ContainsFunc(rows, func(c agent.Verdict) bool { return c.Name == n && c.Fails })
		r := VerifiedCredential{Name: n, Size: int64(e.Value.Len()), SHA256: hex.EncodeToString(sum[:]), Source: e.Source, Prefix: e.Prefix,
			Firmware: "unlisted", Credstore: "-", Systemd: "-", ServedStatus: "-", OK: !fails}
		if i := served(folders, n); i >= 0 {
			r.Served = filepath.Join(folders[i].dir, n)
		}
		if me != nil {
			add(unlistedFinding(n, fails))
		}
		v.Credentials = append(v.Credentials, r)
	}
	// Credstore files nobody listed.
	if store.exists {
		known := map[string]bool{}
		for _, r := range v.Credentials {
			known[r.Name] = true
		}
		var extra []string
		for n := range store.files {
			if !known[n] {
				extra = append(extra, n)
			}
		}
		slices.Sort(extra)
		for _, n := range extra {
			add(Finding{Code: CodeCredstoreExtra, Severity: SeverityInfo, Credential: n,
				Message: "in the credstore but not in the manifest: another tool or an earlier boot put it there",
				Fix:     "nothing to do if a service needs it; remove it otherwise (the agent removes only files it wrote)"})
		}
	}

	v.Findings = sortFindings(fds)
	failed, unread := false, false
	for _, f := range v.Findings {
		if f.Severity != SeverityError {
			continue
		}
		switch f.Code {
		case CodeSourceUnreadable, CodeCredstoreUnreadable, CodeStatusUnreadable:
			unread = true
		default:
			failed = true
		}
	}
	// What could not be read makes the result incomplete even when other
	// checks failed: those failures are often its consequence (no
	// manifest because the DMI table was unreadable), and only a reader
	// who can read everything can tell.
	switch {
	case unread:
		return v, cli.WithCode(cli.ExitIO, errors.New("verification incomplete: some sources or files could not be read; "+fixRunAsRoot))
	case failed:
		v.Result = "failed"
		msg := plural(countErrors(v.Findings), "problem")
		if v.ManifestFrom == ManifestFromSaved && v.Policy == "refused" {
			msg += "; the saved manifest " + v.ManifestFile + " was not accepted"
		}
		return v, cli.WithCode(cli.ExitFailure, fmt.Errorf("verification failed: %s", msg))
	}
	v.OK, v.Result = true, "ok"
	return v, nil
}

func countErrors(fs []Finding) int {
	n := 0
	for _, f := range fs {
		if f.Severity == SeverityError {
			n++
		}
	}
	return n
}

func sha(b []byte) string {
	s := credential.NewSecret(b).SHA256()
	return hex.EncodeToString(s[:])
}

// WriteJSON writes v as one indented JSON object.
func (v Verification) WriteJSON(w io.Writer) error { return writeJSON(w, v) }

// WriteText writes v for a person on an 80-column console.
func (v Verification) WriteText(w io.Writer) error {
	man := describeManifest(v.Policy, v.KeyID)
	if v.VM != "" {
		man += ", vm " + v.VM
	}
	kv(w, "Manifest", man)
	if v.ManifestFrom == ManifestFromSaved {
		kv(w, "", savedText(v.ManifestFile))
	}
	if v.IssuedAt != nil {
		na := "n/a"
		if v.NotAfter != nil {
			na = v.NotAfter.Format(time.RFC3339)
		}
		kv(w, "Issued", v.IssuedAt.Format(time.RFC3339)+", not after "+na)
	}
	trust := "none"
	if v.TrustKeys > 0 {
		trust = plural(v.TrustKeys, "key") + " from " + v.TrustFrom
	}
	kv(w, "Trust keys", trust)
	for i, s := range v.Sources {
		key := ""
		if i == 0 {
			key = "Sources"
		}
		kv(w, key, describeSource(s.Kind, s.Path, s.Found, s.Structures, s.Strings))
	}
	kv(w, "Credstore", v.Credstore)
	if len(v.Credentials) > 0 {
		fmt.Fprintln(w)
		tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "FIRMWARE"}, {head: "CREDSTORE"}, {head: "SYSTEMD"}, {head: "SERVED FROM"}, {head: "OK"}}}
		for _, r := range v.Credentials {
			from := "-"
			if r.Served != "" {
				from = v.in.displayDir(filepath.Dir(r.Served))
				if r.ServedStatus == "mismatch" {
					from = "!" + from
				}
			}
			ok := "yes"
			switch {
			case !r.OK:
				ok = "NO"
			case r.Firmware == "unlisted":
				ok = "-"
			}
			sys := r.Systemd
			if sys == "absent" {
				sys = "-"
			}
			tb.add(printable(r.Name, wholeName), r.Firmware, r.Credstore, sys, from, ok)
		}
		tb.write(w)
	}
	fmt.Fprintln(w)
	switch v.Result {
	case "ok":
		where := "the manifest in the firmware"
		if v.ManifestFrom == ManifestFromSaved {
			where = "the saved manifest"
		}
		wrap(w, "", fmt.Sprintf("OK: %s match %s, the credstore and where LoadCredential= finds them.", plural(len(v.Credentials), "credential"), where))
	case "failed":
		wrap(w, "", fmt.Sprintf("FAILED: %s.", plural(countErrors(v.Findings), "problem")))
	default:
		wrap(w, "", "INCOMPLETE: something could not be read, so nothing was verified (see below).")
	}
	writeFindings(w, v.Findings)
	return nil
}
