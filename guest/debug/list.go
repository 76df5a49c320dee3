// Package debug renders what the guest agent knows for a person or a script:
// the tables and JSON of `vmcred-guest list`, `show`, `verify` and
// `status`. It reads the status file, the credstore, systemd's own copies
// and the rest of LoadCredential='s search path; it hashes credential files
// but never renders a value (Reveal, behind `show --reveal`, is the one
// exception). Every problem it reports comes as a Finding with what to do.
// Guest packages only.
package debug

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// List modes: what a List was built from.
const (
	// ModeFirmware: the live firmware sources, re-read now.
	ModeFirmware = "firmware"
	// ModeStatus: the last load's status file, with the search path as it
	// is now.
	ModeStatus = "status"
	// ModeCredstore: one credstore folder, as `systemd-creds list` shows it.
	ModeCredstore = "credstore"
)

// Credential is one row of `list`: metadata only. Which fields are set
// depends on the List's mode (SCHEMA.md).
type Credential struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`           // 64 hex digits of the value
	Source string `json:"source,omitempty"` // "smbios", "fw_cfg" or "channel"
	Prefix string `json:"prefix,omitempty"` // OEM string prefix; empty for fw_cfg
	// Index is the position among the strings read (firmware mode).
	Index *int `json:"index,omitempty"`
	// Verified is "no" in firmware mode (list does not verify), the last
	// load's verification in status mode, absent in credstore mode.
	Verified string `json:"verified,omitempty"`
	Delivery string `json:"delivery,omitempty"` // as the manifest says
	Exposed  string `json:"exposed,omitempty"`  // the credstore file the load wrote
	// Served is the file LoadCredential=NAME picks now, "" when none.
	Served string `json:"served,omitempty"`
	// ServedMatches says whether the served file's SHA-256 is the verified
	// one; absent when there is nothing to compare.
	ServedMatches *bool  `json:"served_matches,omitempty"`
	Path          string `json:"path,omitempty"`       // credstore mode: the file
	Mode          string `json:"mode,omitempty"`       // permission bits, "0400"
	Filesystem    string `json:"filesystem,omitempty"` // "tmpfs", "ramfs", "magic 0x…"
	// Security is systemd-creds' rating of the file: "secure", "weak" or
	// "insecure" (the served file in status mode).
	Security string `json:"security,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

// Skipped is an input that was not taken as a credential: an OEM string
// (firmware and status modes) or a folder entry (credstore mode).
type Skipped struct {
	Index  *int   `json:"index,omitempty"`
	Source string `json:"source,omitempty"`
	Name   string `json:"name,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
	// Count, when above 0, stands for that many inputs skipped for Reason
	// and not named (no index): only the first oemstring.MaxSkipped are.
	Count int `json:"count,omitempty"`
}

// fromParsed converts the parser's skipped records.
func fromParsed(in []oemstring.Skip) []Skipped {
	out := make([]Skipped, 0, len(in))
	for _, s := range in {
		if s.Count > 0 {
			out = append(out, Skipped{Reason: string(s.Reason), Count: s.Count})
			continue
		}
		out = append(out, Skipped{Index: ptr(s.Index), Source: s.Source, Name: s.Name, Prefix: s.Prefix, Reason: string(s.Reason), Detail: s.Detail})
	}
	return out
}

// skippedCount is how many inputs skipped stands for.
func skippedCount(skipped []Skipped) int {
	n := 0
	for _, s := range skipped {
		n += max(s.Count, 1)
	}
	return n
}

// List is the output of `vmcred-guest list`.
type List struct {
	Mode        string            `json:"mode"`
	Credentials []Credential      `json:"credentials"`
	Skipped     []Skipped         `json:"skipped"`
	Sources     []firmware.Status `json:"sources,omitempty"`
	StatusFile  string            `json:"status_file,omitempty"`
	Outcome     string            `json:"outcome,omitempty"`
	Summary     string            `json:"summary,omitempty"`
	LoadedAt    *time.Time        `json:"loaded_at,omitempty"`
	// Generation is the credential set's generation the last load
	// exposed (status mode; 0 when the manifest had none), and Rotation
	// what the last rotation did (nil when this boot had none).
	Generation uint64          `json:"generation,omitempty"`
	Rotation   *agent.Rotation `json:"rotation,omitempty"`
	Credstore  string          `json:"credstore,omitempty"`
	// ManifestFrom is ManifestFromSaved when the status folder holds the
	// copy of the manifest the last load fetched by channel (status mode);
	// ManifestFile is that file, and Policy and KeyID say how its
	// signature checks now: "signature" (a trusted key) or "refused" (a
	// saved copy needs trust keys). All four are absent otherwise (status
	// mode reads no firmware).
	ManifestFrom string    `json:"manifest_from,omitempty"`
	ManifestFile string    `json:"manifest_file,omitempty"`
	Policy       string    `json:"policy,omitempty"`
	KeyID        string    `json:"key_id,omitempty"`
	Findings     []Finding `json:"findings"`

	in Inspector
}

// ListFromFirmware builds a List from what firmware.Read parsed. verified
// maps a credential name to how it was verified; names not in it show "no".
func ListFromFirmware(rep firmware.Report, verified map[string]string) List {
	l := List{Mode: ModeFirmware, Credentials: []Credential{}, Skipped: []Skipped{}, Sources: rep.Sources}
	for _, e := range rep.Parsed.Entries {
		sum := e.Value.SHA256()
		v := verified[e.Name]
		if v == "" {
			v = "no"
		}
		l.Credentials = append(l.Credentials, Credential{
			Name: e.Name, Size: int64(e.Value.Len()), SHA256: hex.EncodeToString(sum[:]),
			Source: e.Source, Prefix: e.Prefix, Index: ptr(e.Index), Verified: v,
		})
	}
	l.Skipped = append(l.Skipped, fromParsed(rep.Parsed.Skipped)...)
	l.Findings = sortFindings(append(sourceFindings(rep.Sources), skippedFindings(l.Skipped)...))
	return l
}

// Unreadable is an error with exit code 3 when a source in l's findings
// could not be read (a non-root user), else nil: the listing is then
// incomplete, and saying so with exit 0 would hide it.
func (l List) Unreadable() error {
	for _, f := range l.Findings {
		if f.Code == CodeSourceUnreadable || f.Code == CodeCredstoreUnreadable || f.Code == CodeStatusUnreadable {
			return cli.WithCode(cli.ExitIO, fmt.Errorf("%s; %s", f.Message, fixRunAsRoot))
		}
	}
	return nil
}

// ListStatus lists what this boot has: the last load's report from the
// status file, with each credential's file as LoadCredential= finds it now
// on the search path, plus credstore files the report does not name. The
// List is worth printing even with an error, which carries exit code 3
// when the status file, the saved manifest or the credstore cannot be
// read.
//
// When the agent took the manifest from a host session and saved it, the
// agent's own verification (agent.Check) judges it as the session
// manifest it was: pol.TrustKeys and pol.VM are required, as the agent
// requires them for sessions, and the List says by which key and lists
// its manifest problems; list checks no credential against it (`verify`
// does). It reads no firmware: the agent saves
// a copy only when firmware held no manifest, and firmware does not change
// within a boot; when the status file says the manifest came from
// firmware, firmware wins and a copy is ignored. pol.TrustFrom names the
// trust folder in advice.
func ListStatus(in Inspector, pol Policy) (List, error) {
	trustFrom := pol.TrustFrom
	l := List{Mode: ModeStatus, Credentials: []Credential{}, Skipped: []Skipped{}, StatusFile: in.statusPath(), Credstore: in.Credstore, in: in}
	var errs []error
	sf, fds, err := readStatusFile(in)
	l.Findings = append(l.Findings, fds...)
	if err != nil {
		errs = append(errs, err)
	}
	var lm liveManifest
	if sf == nil || sf.rep.ManifestSource != agent.ManifestFromFirmware {
		lm = in.savedManifest()
	}
	l.Findings = append(l.Findings, lm.findings...)
	if lm.err != nil {
		errs = append(errs, cli.WithCode(cli.ExitIO, lm.err))
	}
	if lm.entry != nil {
		res := lm.check(pol, in.now(), nil)
		l.ManifestFrom, l.ManifestFile, l.KeyID = lm.from, lm.file, res.KeyID
		switch {
		case res.Refused != nil:
			l.Policy = "refused"
		case res.Trusted:
			l.Policy = agent.PolicySignature
		default:
			l.Policy = agent.PolicyDigest
		}
		for _, p := range res.ManifestProblems {
			l.Findings = append(l.Findings, lm.finding(p, trustFrom))
		}
	}
	folders := in.scan()
	var store *folder
	for i := range folders {
		if folders[i].dir == in.Credstore {
			store = &folders[i]
		}
	}
	if store == nil {
		// The credstore is not on the search path (a custom --search-path):
		// still list it.
		f := in.scanOne(in.Credstore)
		store = &f
	}

	// expected is the digest a served file should have, when known.
	expected := map[string]string{}
	reported := map[string]bool{}
	if sf != nil {
		rep := sf.rep
		l.Outcome, l.Summary, l.LoadedAt = rep.Outcome, rep.Summary, ptr(rep.StartedAt.UTC())
		l.Generation, l.Rotation = rep.Generation, rep.Rotation
		l.Skipped = fromAgentSkipped(rep.Skipped)
		l.Sources = rep.Sources
		l.Findings = append(l.Findings, reportFindings(rep, trustFrom)...)
		for _, c := range rep.Credentials {
			reported[c.Name] = true
			l.Credentials = append(l.Credentials, Credential{
				Name: c.Name, Size: int64(c.Size), SHA256: c.SHA256, Source: c.Source, Prefix: c.Prefix,
				Verified: c.Verification, Delivery: c.Delivery, Exposed: c.Exposed, Problem: c.Problem,
			})
			switch c.Verification {
			case agent.PolicySignature, agent.PolicyDigest, agent.PolicyUnverified, "missing", "fetch-failed":
				expected[c.Name] = c.SHA256
			}
		}
	}
	if store.exists {
		var extra []string
		for name := range store.files {
			if !reported[name] {
				extra = append(extra, name)
			}
		}
		slices.Sort(extra)
		for _, name := range extra {
			fi := store.files[name]
			l.Credentials = append(l.Credentials, Credential{Name: name, Size: fi.Size, Exposed: filepath.Join(store.dir, name)})
			if sf != nil {
				l.Findings = append(l.Findings, Finding{Code: CodeCredstoreExtra, Severity: SeverityInfo, Credential: name,
					Message: "in the credstore but not in the last load's report: another tool or an earlier boot put it there",
					Fix:     "nothing to do if a service needs it; remove it otherwise (the agent removes only files it wrote)"})
			}
		}
	}
	l.Findings = append(l.Findings, storeFindings(*store, sf)...)
	if store.err != nil && unreadable(store.err) {
		errs = append(errs, cli.WithCode(cli.ExitIO, fmt.Errorf("list credstore %s: %w", store.dir, store.err)))
	}

	// Resolve and hash each credential's served file, one folder at a time.
	toHash := map[int][]string{}
	for i := range l.Credentials {
		c := &l.Credentials[i]
		fi := served(folders, c.Name)
		if fi < 0 {
			continue
		}
		c.Served = filepath.Join(folders[fi].dir, c.Name)
		c.Security = string(folders[fi].files[c.Name].Security)
		toHash[fi] = append(toHash[fi], c.Name)
	}
	sums := map[string]digest{}
	for fi, names := range toHash {
		for n, d := range hashAll(in.real(folders[fi].dir), names) {
			sums[n] = d
		}
	}
	systemdNoted := map[string]bool{}
	if sf != nil {
		for _, n := range sf.rep.SystemCheck {
			if n.Status != "match" {
				systemdNoted[n.Name] = true
			}
		}
	}
	for i := range l.Credentials {
		c := &l.Credentials[i]
		want, known := expected[c.Name]
		if c.Served == "" {
			if known && sf != nil && sf.rep.Outcome == agent.OutcomeReady && c.Problem == "" {
				l.Findings = append(l.Findings, Finding{Code: CodeServedNone, Severity: SeverityError, Credential: c.Name,
					Message: fmt.Sprintf("the last load verified it, but no folder on the search path holds it now, so LoadCredential=%s gets nothing", c.Name),
					Fix:     "something removed it from the credstore: " + fixRewrite})
			}
			continue
		}
		d := sums[c.Name]
		if c.SHA256 == "" {
			c.SHA256 = d.sum // a file the report does not name
		}
		if d.err != nil {
			l.Findings = append(l.Findings, fileFinding(c.Name, c.Served, d.err))
			if unreadable(d.err) {
				errs = append(errs, cli.WithCode(cli.ExitIO, fmt.Errorf("hash credential %q: %w", c.Name, d.err)))
			}
			continue
		}
		if !known {
			continue
		}
		ok := d.sum == want
		c.ServedMatches = &ok
		if ok || systemdNoted[c.Name] {
			continue
		}
		l.Findings = append(l.Findings, servedMismatch(c.Name, c.Served, d.size, c.Exposed))
	}
	l.Findings = sortFindings(l.Findings)
	return l, errors.Join(errs...)
}

// servedMismatch is a served file whose digest is not the verified one.
func servedMismatch(name, path string, size int64, exposed string) Finding {
	if path == exposed {
		return Finding{Code: CodeCredstoreMismatch, Severity: SeverityError, Credential: name,
			Message: fmt.Sprintf("%s (%d bytes) changed since the load verified it", path, size),
			Fix:     fixRewrite + "; find what else writes to the credstore"}
	}
	return Finding{Code: CodeServedShadowed, Severity: SeverityError, Credential: name,
		Message: fmt.Sprintf("LoadCredential=%s picks %s (%d bytes), which is not the verified copy: that folder comes earlier on systemd's search path", name, path, size),
		Fix:     fmt.Sprintf("remove %s, or give one of the two credentials another name", path)}
}

// fileFinding is a credential file that could not be read.
func fileFinding(name, path string, err error) Finding {
	if unreadable(err) {
		return Finding{Code: CodeCredstoreUnreadable, Severity: SeverityError, Credential: name, Message: fmt.Sprintf("cannot read %s: permission denied", path), Fix: fixRunAsRoot}
	}
	return Finding{Code: CodeCredstoreUnreadable, Severity: SeverityError, Credential: name, Message: err.Error(),
		Fix: "check the file with `ls -l`; the agent writes regular files, mode 0400"}
}

// storeFindings are the credstore folder's own problems: missing,
// unreadable, insecure files, not in memory. sf is the last load's report,
// nil when there is none.
func storeFindings(store folder, sf *statusFile) []Finding {
	var out []Finding
	switch {
	case !store.exists:
		// After a failed first load there is no credstore yet; the
		// load-failed finding says what to do.
		if sf == nil || sf.rep.Outcome == agent.OutcomeReady {
			out = append(out, Finding{Code: CodeCredstoreMissing, Severity: SeverityError,
				Message: fmt.Sprintf("the credstore %s does not exist: no load has exposed anything in this boot", store.dir),
				Fix:     "run `systemctl status vmcred-guest`; vmcred-guest.service creates it (RuntimeDirectory=credstore) and fills it"})
		}
		return out
	case store.err != nil:
		if unreadable(store.err) {
			out = append(out, Finding{Code: CodeCredstoreUnreadable, Severity: SeverityError, Message: fmt.Sprintf("cannot list %s: permission denied", store.dir), Fix: fixRunAsRoot})
		} else {
			out = append(out, Finding{Code: CodeCredstoreUnreadable, Severity: SeverityError, Message: store.err.Error(), Fix: "check the folder with `ls -ld`; the agent creates it mode 0700, root"})
		}
		return out
	}
	names := make([]string, 0, len(store.files))
	for n := range store.files {
		names = append(names, n)
	}
	slices.Sort(names)
	persistent := ""
	for _, n := range names {
		fi := store.files[n]
		if fi.Security == credstore.Insecure {
			out = append(out, Finding{Code: CodeCredstoreInsecure, Severity: SeverityWarning, Credential: n,
				Message: fmt.Sprintf("mode %s lets more than its owner read it (systemd-creds rates it insecure)", modeString(fi.Mode)),
				Fix:     fmt.Sprintf("`chmod 0400 %s`; the agent writes 0400 itself, so another tool wrote this file", filepath.Join(store.dir, n))})
		}
		if !fi.Filesystem.InMemory() && persistent == "" {
			persistent = fi.Filesystem.String()
		}
	}
	if persistent != "" {
		out = append(out, Finding{Code: CodeCredstorePersistent, Severity: SeverityWarning,
			Message: fmt.Sprintf("%s is on %s, not tmpfs or ramfs: secrets may reach a disk and outlive the VM", store.dir, persistent),
			Fix:     "use a folder under /run (tmpfs), as vmcred-guest.service does, and drop --allow-persistent"})
	}
	return out
}

// scanOne lists one folder as scan does.
func (in Inspector) scanOne(dir string) folder {
	s := Inspector{Root: in.Root, SearchPath: []string{dir}, ListDir: in.ListDir}
	return s.scan()[0]
}

// ListCredstore lists one credstore folder as `systemd-creds list` does
// with CREDENTIALS_DIRECTORY=dir (name, size, secure/weak/insecure for the
// file system it is on), adding each file's mode and SHA-256. Entries that
// are not credentials (invalid names, the agent's temporary files, links,
// folders) are in Skipped. The error carries exit code 3 when the folder
// cannot be read.
func ListCredstore(in Inspector, dir string) (List, error) {
	l := List{Mode: ModeCredstore, Credentials: []Credential{}, Skipped: []Skipped{}, Credstore: dir, in: in}
	real := in.real(dir)
	var (
		files   []credstore.FileInfo
		sums    map[string]digest
		skipped []Skipped
		err     error
	)
	if in.ListDir == nil {
		files, sums, skipped, err = listHashed(real)
	} else {
		files, sums, skipped, err = listThenHash(in.ListDir, real)
	}
	store := folder{dir: dir, exists: true, files: map[string]credstore.FileInfo{}}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		store.exists = false
	case err != nil:
		store.err = err
	}
	for _, fi := range files {
		store.files[fi.Name] = fi
	}
	l.Findings = storeFindings(store, nil)
	switch {
	case !store.exists:
		l.Findings = sortFindings(l.Findings)
		return l, cli.WithCode(cli.ExitIO, fmt.Errorf("list credstore %s: %w", dir, fs.ErrNotExist))
	case store.err != nil:
		l.Findings = sortFindings(l.Findings)
		return l, cli.WithCode(cli.ExitIO, fmt.Errorf("list credstore %s: %w", dir, store.err))
	}
	var errs []error
	for _, fi := range files {
		d := sums[fi.Name]
		c := Credential{Name: fi.Name, Size: fi.Size, SHA256: d.sum, Path: filepath.Join(dir, fi.Name), Mode: modeString(fi.Mode),
			Filesystem: fi.Filesystem.String(), Security: string(fi.Security)}
		if d.err != nil {
			l.Findings = append(l.Findings, fileFinding(fi.Name, c.Path, d.err))
			if unreadable(d.err) {
				errs = append(errs, cli.WithCode(cli.ExitIO, fmt.Errorf("hash credential %q: %w", fi.Name, d.err)))
			}
		} else {
			c.Size = d.size
		}
		l.Credentials = append(l.Credentials, c)
	}
	l.Skipped = append(l.Skipped, skipped...)
	l.Findings = sortFindings(l.Findings)
	return l, errors.Join(errs...)
}

// listThenHash lists dir with list (credstore.List or a test's stand-in),
// then hashes what it listed; entries it left out are in skipped, as
// `systemd-creds list` would leave them out.
func listThenHash(list func(string) ([]credstore.FileInfo, error), dir string) ([]credstore.FileInfo, map[string]digest, []Skipped, error) {
	files, err := list(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	names := make([]string, 0, len(files))
	listed := make(map[string]bool, len(files))
	for _, fi := range files {
		names = append(names, fi.Name)
		listed[fi.Name] = true
	}
	sums := hashAll(dir, names)
	var skipped []Skipped
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if listed[e.Name()] {
			continue
		}
		reason := "not a regular file"
		if credential.ValidateName(e.Name()) != nil {
			reason = "not a valid credential name"
		}
		skipped = append(skipped, Skipped{Name: e.Name(), Reason: reason, Detail: e.Type().String()})
	}
	return files, sums, skipped, nil
}

// WriteJSON writes l as one indented JSON object.
func (l List) WriteJSON(w io.Writer) error { return writeJSON(w, l) }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteText writes l as an aligned table for an 80-column console, like
// `systemd-creds list`, then the skipped strings and the problems found.
func (l List) WriteText(w io.Writer) error {
	if layoutOf(w).NoLegend {
		// Only the rows: no headings, nothing before or after them.
		tb := l.firmwareTable
		switch l.Mode {
		case ModeStatus:
			tb = func() table { t, _ := l.statusTable(); return t }
		case ModeCredstore:
			tb = l.credstoreTable
		}
		t := tb()
		t.write(w)
		return nil
	}
	switch l.Mode {
	case ModeStatus:
		l.writeStatusText(w)
	case ModeCredstore:
		l.writeCredstoreText(w)
	default:
		l.writeFirmwareText(w)
	}
	writeFindings(w, l.Findings)
	return nil
}

func (l List) writeFirmwareText(w io.Writer) {
	tb := l.firmwareTable()
	if tb.write(w) {
		fmt.Fprintln(w)
	}
	fmt.Fprint(w, plural(len(l.Credentials), "credential"))
	writeSkipped(w, l.Skipped, "string")
	if slices.ContainsFunc(l.Credentials, func(c Credential) bool { return c.Verified == "no" }) {
		wrap(w, "", "list reads, it does not verify: VERIFIED says \"no\" for what no load has verified; `vmcred-guest verify` checks them now.")
	}
}

func (l List) firmwareTable() table {
	tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "SOURCE"}, {head: "SIZE", right: true}, {head: "SHA256"}, {head: "VERIFIED"}}}
	for _, c := range l.Credentials {
		tb.add(printable(c.Name, wholeName), c.Source, humanSize(c.Size), short(c.SHA256), c.Verified)
	}
	return tb
}

func writeSkipped(w io.Writer, skipped []Skipped, noun string) {
	if len(skipped) == 0 {
		fmt.Fprintln(w, ".")
		return
	}
	fmt.Fprintf(w, ", %s skipped:\n", plural(skippedCount(skipped), noun))
	for _, s := range skipped {
		if s.Count > 0 {
			wrap(w, "  ", fmt.Sprintf("%s more: %s", plural(s.Count, noun), s.Reason))
			continue
		}
		var what string
		if s.Index != nil {
			what = fmt.Sprintf("#%d %s", *s.Index, s.Source)
		}
		if s.Name != "" {
			if what != "" {
				what += " "
			}
			what += printable(s.Name, 40)
		}
		detail := ""
		if s.Detail != "" {
			detail = " (" + s.Detail + ")"
		}
		wrap(w, "  ", what+": "+s.Reason+detail)
	}
}

func (l List) writeStatusText(w io.Writer) {
	load := "n/a (no status file)"
	if l.Outcome != "" {
		load = l.Outcome
		if l.LoadedAt != nil {
			load += " at " + l.LoadedAt.Format(time.RFC3339)
		}
		if l.Outcome == agent.OutcomeReady {
			load += ": " + l.Summary
		} else {
			load += " (the problems are below; `vmcred-guest status` has the report)"
		}
	}
	kv(w, "Last load", load)
	if l.Outcome != "" {
		kv(w, "Generation", generationText(l.Generation, *l.LoadedAt))
		writeRotation(w, l.Rotation)
	}
	if l.ManifestFrom == ManifestFromSaved {
		kv(w, "Manifest", describeManifest(l.Policy, l.KeyID))
		kv(w, "", savedText(l.ManifestFile))
	}
	kv(w, "Status file", l.StatusFile)
	kv(w, "Credstore", l.Credstore)
	fmt.Fprintln(w)
	tb, marked := l.statusTable()
	if tb.write(w) {
		fmt.Fprintln(w)
	}
	fmt.Fprint(w, plural(len(l.Credentials), "credential"))
	writeSkipped(w, l.Skipped, "string")
	if marked {
		wrap(w, "", "! LoadCredential= picks a file whose SHA-256 is not the one the load verified.")
	}
}

// statusTable is the table of the status view, and whether a row is
// marked "!".
func (l List) statusTable() (table, bool) {
	tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "SOURCE"}, {head: "SIZE", right: true}, {head: "SHA256"}, {head: "VERIFIED"}, {head: "SERVED FROM"}, {head: "SECURE"}}}
	marked := false
	for _, c := range l.Credentials {
		from := "-"
		if c.Served != "" {
			from = l.in.displayDir(filepath.Dir(c.Served))
			if c.ServedMatches != nil && !*c.ServedMatches {
				from = "!" + from
				marked = true
			}
		}
		tb.add(printable(c.Name, wholeName), orDash(c.Source), humanSize(c.Size), short(c.SHA256), verifiedLabel(c.Verified), from, orDash(c.Security))
	}
	return tb, marked
}

func (l List) credstoreTable() table {
	tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "SECURE"}, {head: "SIZE", right: true}, {head: "MODE"}, {head: "SHA256"}}}
	for _, c := range l.Credentials {
		tb.add(printable(c.Name, wholeName), c.Security, humanSize(c.Size), c.Mode, short(c.SHA256))
	}
	return tb
}

func (l List) writeCredstoreText(w io.Writer) {
	fsName := "empty"
	if len(l.Credentials) > 0 {
		fsName = l.Credentials[0].Filesystem
	}
	kv(w, "Credstore", fmt.Sprintf("%s (%s)", l.Credstore, fsName))
	fmt.Fprintln(w)
	tb := l.credstoreTable()
	if tb.write(w) {
		fmt.Fprintln(w)
	}
	fmt.Fprint(w, plural(len(l.Credentials), "credential"))
	writeSkipped(w, l.Skipped, "entry")
}
