package debug

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// Shown is the output of `vmcred-guest show NAME`: everything known about
// one credential, without its value.
type Shown struct {
	Name string `json:"name"`
	// Known is false when no source, report or folder has the name.
	Known bool `json:"known"`
	// Manifest is the manifest's entry (the live firmware's manifest, or
	// the copy the last load saved when firmware holds none); null without
	// one.
	Manifest *ShownManifest `json:"manifest"`
	// LastLoad is the credential in the last load's report; null when the
	// report does not name it or there is no report.
	LastLoad *ShownLoad `json:"last_load"`
	// Sources are the live firmware strings that carried the name: the one
	// taken and any skipped (duplicates, bad base64).
	Sources []ShownSource `json:"sources"`
	// Systemd is systemd's own copy compared with the manifest: "match",
	// "truncated", "differs", "dropped", "absent", "unreadable", or "n/a".
	Systemd string `json:"systemd"`
	// SearchPath is every folder LoadCredential=NAME searches, in order.
	SearchPath []Copy `json:"search_path"`
	// LoadCredential is the file LoadCredential=NAME picks, "" when none.
	LoadCredential string    `json:"load_credential"`
	Findings       []Finding `json:"findings"`
}

// ShownManifest is what the manifest says of the credential.
type ShownManifest struct {
	// From is where the manifest came from: ManifestFromFirmware or
	// ManifestFromSaved.
	From string `json:"from"`
	// File is the saved copy read, when From is "saved".
	File     string `json:"file,omitempty"`
	Size     uint64 `json:"size"`
	SHA256   string `json:"sha256"`
	Delivery string `json:"delivery"`
	Static   bool   `json:"static"`
	VM       string `json:"vm"`
	KeyID    string `json:"key_id,omitempty"`
	// Signature: "trusted" (verified against a trusted key), "refused"
	// (the trusted keys refused it), "not-checked" (signed, no trust keys
	// given) or "unsigned".
	Signature string `json:"signature"`
}

// ShownLoad is the credential as the last load recorded it.
type ShownLoad struct {
	Outcome      string    `json:"outcome"`
	At           time.Time `json:"at"`
	Policy       string    `json:"policy"`
	KeyID        string    `json:"key_id,omitempty"`
	Verification string    `json:"verification"`
	Source       string    `json:"source,omitempty"`
	Prefix       string    `json:"prefix,omitempty"`
	Size         int       `json:"size"`
	SHA256       string    `json:"sha256"`
	Delivery     string    `json:"delivery,omitempty"`
	Exposed      string    `json:"exposed,omitempty"`
	Served       string    `json:"served,omitempty"`
	Problem      string    `json:"problem,omitempty"`
	// Systemd is the load's cross-check of systemd's copy, if it made one.
	Systemd string `json:"systemd,omitempty"`
}

// ShownSource is one live firmware string or entry that carried the name.
type ShownSource struct {
	Source string `json:"source"`
	Prefix string `json:"prefix,omitempty"`
	Index  int    `json:"index"`
	Taken  bool   `json:"taken"`
	Size   *int   `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Reason string `json:"reason,omitempty"` // why it was skipped
	Detail string `json:"detail,omitempty"`
}

// Copy is the credential's file in one folder of the search path.
type Copy struct {
	Dir      string `json:"dir"`
	Path     string `json:"path"`
	Exists   bool   `json:"exists"`
	Size     int64  `json:"size,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	Mode     string `json:"mode,omitempty"`
	Security string `json:"security,omitempty"`
	// Matches says whether the SHA-256 is the manifest's (or, without a
	// manifest, the verified one); absent when there is nothing to compare.
	Matches *bool  `json:"matches,omitempty"`
	Picked  bool   `json:"picked"`
	Error   string `json:"error,omitempty"`
}

// Show gathers everything known about the credential name: the live
// firmware (fw, or fwErr when it could not be read), its manifest under
// pol, the last load's report and every folder LoadCredential=NAME
// searches. The error carries exit code 1 when nothing anywhere knows the
// name.
func Show(in Inspector, name string, fw firmware.Report, fwErr error, pol Policy) (Shown, error) {
	sh := Shown{Name: name, Sources: []ShownSource{}, SearchPath: []Copy{}, Systemd: "n/a"}
	var fds []Finding
	add := func(f ...Finding) { fds = append(fds, f...) }

	// The last load.
	sf, sfds, _ := readStatusFile(in)
	add(sfds...)
	expected := ""
	var systemDir string
	if sf != nil {
		rep := sf.rep
		for _, f := range reportFindings(rep, pol.TrustFrom) {
			if f.Credential == name || f.Code == CodeLoadFailed || strings.HasPrefix(f.Code, "manifest-") {
				add(f)
			}
		}
		if i := slices.IndexFunc(rep.Credentials, func(c agent.CredentialResult) bool { return c.Name == name }); i >= 0 {
			c := rep.Credentials[i]
			sh.LastLoad = &ShownLoad{Outcome: rep.Outcome, At: rep.StartedAt.UTC(), Policy: rep.Policy, KeyID: rep.KeyID,
				Verification: c.Verification, Source: c.Source, Prefix: c.Prefix, Size: c.Size, SHA256: c.SHA256,
				Delivery: c.Delivery, Exposed: c.Exposed, Served: c.Served, Problem: c.Problem}
			for _, n := range rep.SystemCheck {
				if n.Name == name {
					sh.LastLoad.Systemd = n.Status
				}
			}
			switch c.Verification {
			case agent.PolicySignature, agent.PolicyDigest, agent.PolicyUnverified, "missing", "fetch-failed":
				expected = c.SHA256
			}
		}
	}

	// The live firmware and its manifest.
	var value *oemstring.Entry
	if fwErr != nil {
		for _, f := range sourceFindings(fw.Sources) {
			if f.Severity == SeverityError {
				f.Severity = SeverityWarning // show still has the rest to say
			}
			add(f)
		}
	}
	for i, e := range fw.Parsed.Entries {
		if e.Name == name {
			value = &fw.Parsed.Entries[i]
			sum := e.Value.SHA256()
			sh.Sources = append(sh.Sources, ShownSource{Source: e.Source, Prefix: e.Prefix, Index: e.Index, Taken: true, Size: ptr(e.Value.Len()), SHA256: fmt.Sprintf("%x", sum[:])})
		}
	}
	for _, s := range fw.Parsed.Skipped {
		if s.Name == name {
			sh.Sources = append(sh.Sources, ShownSource{Source: s.Source, Prefix: s.Prefix, Index: s.Index, Reason: string(s.Reason), Detail: s.Detail})
		}
	}
	slices.SortFunc(sh.Sources, func(a, b ShownSource) int { return a.Index - b.Index })
	lm := findManifest(in, fw, fwErr)
	add(lm.findings...)
	if lm.entry != nil {
		var firmwareCreds []oemstring.Entry
		for _, e := range fw.Parsed.Entries {
			if e.Name != agent.ManifestName {
				firmwareCreds = append(firmwareCreds, e)
			}
		}
		res := lm.check(pol, in.now(), firmwareCreds)
		rows := res.Credentials
		if res.Refused != nil {
			rows = res.Unverified
		}
		if m := res.Manifest; m != nil {
			if ent, ok := m.Lookup(name); ok {
				sm := &ShownManifest{From: lm.from, Size: ent.Size, SHA256: fmt.Sprintf("%x", ent.SHA256[:]), Delivery: ent.Delivery.String(), Static: ent.Static, VM: m.VM, KeyID: res.KeyID}
				switch {
				case res.Refused != nil:
					sm.Signature = "refused"
				case res.Trusted:
					sm.Signature = "trusted"
				case res.KeyID != "":
					sm.Signature = "not-checked"
				default:
					sm.Signature = "unsigned"
				}
				if lm.from == ManifestFromSaved {
					sm.File = lm.file
				}
				sh.Manifest = sm
				expected = sm.SHA256
			}
		}
		for _, c := range rows {
			if c.Name != name {
				continue
			}
			switch c.Verdict {
			case agent.VerdictMissing:
				add(missingFinding(name, c.Size, c.Delivery))
			case agent.VerdictMismatch:
				add(mismatchFinding(name, strings.TrimPrefix(c.Problem, fmt.Sprintf("credential %q: ", name))))
			case agent.VerdictNotInManifest:
				add(unlistedFinding(name, c.Fails))
			}
		}
		for _, p := range res.ManifestProblems {
			add(lm.finding(p, pol.TrustFrom))
		}
	}

	// The search path, in systemd's order.
	folders := in.scan()
	picked := -1
	systemdNoted := false
	for i, f := range folders {
		cp := Copy{Dir: f.dir, Path: filepath.Join(f.dir, name)}
		fi, ok := f.files[name]
		switch {
		case f.err != nil:
			cp.Error = f.err.Error()
		case ok:
			cp.Exists, cp.Mode, cp.Security = true, modeString(fi.Mode), string(fi.Security)
			d := hashFile(in.real(cp.Path))
			if d.err != nil {
				cp.Error = d.err.Error()
				add(fileFinding(name, cp.Path, d.err))
			} else {
				cp.Size, cp.SHA256 = d.size, d.sum
				if expected != "" {
					cp.Matches = ptr(d.sum == expected)
				}
			}
			if picked < 0 {
				picked = i
				cp.Picked = true
				sh.LoadCredential = cp.Path
			}
		}
		if f.dir == in.SystemCredentials && in.SystemCredentials != "" && f.exists {
			systemDir = f.dir
			sh.Systemd = "absent"
			if cp.Exists {
				sh.Systemd = "match"
				if cp.Matches != nil && !*cp.Matches {
					sh.Systemd = "differs"
					if sh.Manifest != nil && value != nil && uint64(cp.Size) < sh.Manifest.Size {
						if got, _, err := agent.ReadFileCapped(in.real(cp.Path), int64(sh.Manifest.Size)); err == nil && bytes.HasPrefix(value.Value.Reveal(), got) {
							sh.Systemd = "truncated"
						}
					}
				}
				if cp.Error != "" {
					sh.Systemd = "unreadable"
				}
			} else if value != nil && (value.Prefix == oemstring.PrefixText || value.Prefix == oemstring.PrefixBinary || value.Source == firmware.SourceFwCfg) {
				sh.Systemd = "dropped"
			}
			if sh.Manifest != nil {
				if f, ok := systemdFinding(name, sh.Systemd, sh.Manifest.Size, cp.Size, systemDir); ok {
					add(f)
					systemdNoted = f.Severity == SeverityError
				}
			}
		}
		sh.SearchPath = append(sh.SearchPath, cp)
	}
	if picked >= 0 {
		cp := sh.SearchPath[picked]
		if cp.Matches != nil && !*cp.Matches && !systemdNoted {
			add(servedMismatch(name, cp.Path, cp.Size, filepath.Join(in.Credstore, name)))
		}
	} else if expected != "" {
		f := Finding{Code: CodeServedNone, Severity: SeverityError, Credential: name,
			Message: fmt.Sprintf("no folder on the search path holds it, so a service's LoadCredential=%s gets nothing (systemd logs \"Couldn't read inherited credential\" and starts it anyway)", name),
			Fix:     "`vmcred-guest status` says why the last load did not expose it; fix that, then " + fixRewrite}
		add(f)
	}

	sh.Known = sh.LastLoad != nil || sh.Manifest != nil || len(sh.Sources) > 0 || picked >= 0
	unread := slices.ContainsFunc(fds, func(f Finding) bool {
		return f.Code == CodeStatusUnreadable || f.Code == CodeSourceUnreadable || f.Code == CodeCredstoreUnreadable
	}) || slices.ContainsFunc(folders, func(f folder) bool { return f.err != nil })
	if !sh.Known && unread {
		// Not knowing it means nothing when the places that would know
		// could not be read.
		sh.Findings = sortFindings(fds)
		return sh, cli.WithCode(cli.ExitIO, fmt.Errorf("credential %q: some of the places that would know it could not be read; %s", name, fixRunAsRoot))
	}
	if !sh.Known {
		f := Finding{Code: CodeCredentialUnknown, Severity: SeverityError, Credential: name,
			Message: "no credential of that name in the last load, the manifest, the firmware or any folder LoadCredential= searches",
			Fix:     "check the name in the unit's LoadCredential= and in `vmcred-host pack` (--cred NAME=…); names are case-sensitive"}
		if alt := similarName(name, sf, fw, folders); alt != "" {
			f.Fix = fmt.Sprintf("did you mean %q? Names are case-sensitive; check the unit's LoadCredential= and `vmcred-host pack` (--cred NAME=…)", alt)
		}
		add(f)
	}
	sh.Findings = sortFindings(fds)
	if !sh.Known {
		return sh, cli.WithCode(cli.ExitFailure, fmt.Errorf("credential %q: not found", name))
	}
	return sh, nil
}

// similarName finds a known name that differs from name only in case.
func similarName(name string, sf *statusFile, fw firmware.Report, folders []folder) string {
	var names []string
	if sf != nil {
		for _, c := range sf.rep.Credentials {
			names = append(names, c.Name)
		}
	}
	for _, e := range fw.Parsed.Entries {
		names = append(names, e.Name)
	}
	for _, f := range folders {
		for n := range f.files {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return n
		}
	}
	return ""
}

// Reveal writes the value of the file LoadCredential=name would pick to w,
// byte for byte with no newline added: what a service would get. It
// returns the path it read. Only `show --reveal` calls it.
func Reveal(in Inspector, name string, w io.Writer) (string, error) {
	folders := in.scan()
	i := served(folders, name)
	if i < 0 {
		// A folder this user may not list may hold it: that is "cannot
		// read" (exit 3), not "no such credential".
		for _, f := range folders {
			if f.err != nil {
				return "", cli.WithCode(cli.ExitIO, fmt.Errorf("credential %q: cannot list %s: %w; %s", name, f.dir, f.err, fixRunAsRoot))
			}
		}
		return "", cli.WithCode(cli.ExitFailure, fmt.Errorf("credential %q: no file on LoadCredential='s search path (%s) to reveal", name, strings.Join(in.searchPath(), ", ")))
	}
	path := filepath.Join(folders[i].dir, name)
	b, _, err := agent.ReadFileCapped(in.real(path), maxFile+1)
	if err != nil {
		return path, cli.WithCode(cli.ExitIO, fmt.Errorf("reveal credential %q: %w", name, err))
	}
	if len(b) > maxFile {
		return path, cli.WithCode(cli.ExitIO, fmt.Errorf("reveal credential %q: %s is over %d bytes", name, path, maxFile))
	}
	defer clear(b)
	if _, err := w.Write(b); err != nil {
		var ee *cli.ExitError
		if errors.As(err, &ee) {
			return path, err // the writer's own refusal, with its code
		}
		return path, cli.WithCode(cli.ExitIO, fmt.Errorf("reveal credential %q: write: %w", name, err))
	}
	return path, nil
}

// systemdText explains Systemd in words.
func (sh Shown) systemdText() string {
	switch sh.Systemd {
	case "match":
		return "match: systemd imported an intact copy"
	case "truncated":
		return "truncated: systemd imported a short copy (see below)"
	case "differs":
		return "differs from the manifest (see below)"
	case "dropped":
		return "none: systemd dropped it, so the credstore copy serves"
	case "absent":
		for _, s := range sh.Sources {
			if s.Taken && s.Prefix == oemstring.PrefixVmcred {
				return "none: systemd ignores vmcred's own prefix (verified mode), as intended"
			}
		}
		return "none"
	case "n/a":
		return "n/a: no @system folder on the search path"
	}
	return sh.Systemd
}

// WriteJSON writes sh as one indented JSON object.
func (sh Shown) WriteJSON(w io.Writer) error { return writeJSON(w, sh) }

// WriteText writes sh for a person on an 80-column console.
func (sh Shown) WriteText(w io.Writer) error {
	kv(w, "Credential", printable(sh.Name, 64))
	if m := sh.Manifest; m != nil {
		kind := "secret"
		if m.Static {
			kind = "static"
		}
		kv(w, "Manifest", fmt.Sprintf("%d bytes, sha256 %s…, %s, delivery %s", m.Size, short(m.SHA256), kind, m.Delivery))
		sig := "unsigned"
		switch m.Signature {
		case "trusted":
			sig = "signed by trusted ed25519 key " + m.KeyID
		case "refused":
			sig = "signed by ed25519 key " + orNA(m.KeyID) + ": refused (see below)"
		case "not-checked":
			sig = "signed by ed25519 key " + m.KeyID + " (not checked: no trust keys)"
		}
		kv(w, "", sig+", vm "+m.VM)
		if m.From == ManifestFromSaved {
			kv(w, "", savedText(m.File))
		}
	} else {
		kv(w, "Manifest", "n/a (not in the live manifest, or no manifest)")
	}
	if l := sh.LastLoad; l != nil {
		s := fmt.Sprintf("%s at %s; verification %s; %d bytes, sha256 %s…", l.Outcome, l.At.Format(time.RFC3339), l.Verification, l.Size, short(l.SHA256))
		if l.Exposed != "" {
			s += "; exposed " + l.Exposed
		} else {
			s += "; not exposed"
		}
		if l.Systemd != "" {
			s += "; systemd's copy " + l.Systemd
		}
		kv(w, "Last load", s)
	} else {
		kv(w, "Last load", "n/a (not in the status file, or no status file)")
	}
	if len(sh.Sources) == 0 {
		kv(w, "Carried by", "no live firmware string")
	}
	for i, s := range sh.Sources {
		key := ""
		if i == 0 {
			key = "Carried by"
		}
		d := fmt.Sprintf("%s #%d", s.Source, s.Index)
		if s.Prefix != "" {
			d += " " + s.Prefix
		}
		if s.Taken {
			d += fmt.Sprintf(" %d bytes, sha256 %s… (taken)", *s.Size, short(s.SHA256))
		} else {
			d += " skipped: " + s.Reason
		}
		kv(w, key, d)
	}
	kv(w, "systemd copy", sh.systemdText())
	picks := "nothing: no folder holds it"
	if sh.LoadCredential != "" {
		picks = sh.LoadCredential
	}
	kv(w, "Served", "LoadCredential="+printable(sh.Name, 40)+" picks "+picks)
	fmt.Fprintln(w)
	tb := table{cols: []column{{head: "#", right: true}, {head: "SEARCHED"}, {head: "SIZE", right: true}, {head: "SHA256"}, {head: "SECURE"}, {head: "MATCH"}, {head: "PICKED"}}}
	for i, c := range sh.SearchPath {
		size, sum, sec, match, picked := "-", "-", "-", "-", ""
		if c.Exists {
			size, sum, sec = humanSize(c.Size), short(c.SHA256), c.Security
			if c.Matches != nil {
				match = "no"
				if *c.Matches {
					match = "yes"
				}
			}
		}
		if c.Error != "" {
			sum = "unreadable"
		}
		if c.Picked {
			picked = "<-"
		}
		tb.add(fmt.Sprint(i+1), c.Dir, size, sum, sec, match, picked)
	}
	tb.write(w)
	writeFindings(w, sh.Findings)
	return nil
}
