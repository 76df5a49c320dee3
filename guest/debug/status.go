package debug

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/shared/cli"
)

// maxStatusSize bounds the status file read; a report of MaxEntries
// credentials is far smaller.
const maxStatusSize = 16 << 20

// HostAck is whether the host acknowledged the guest's readiness report
// over the channel, from the report's "fetch" step. It is nil (shown as
// "n/a") when the load used no channel.
type HostAck struct {
	// Reported is true when the REPORT went out and the host answered.
	Reported bool `json:"reported"`
	// Acknowledged is true when that answer was an ACK, whose text is Ack.
	Acknowledged bool   `json:"acknowledged"`
	Ack          string `json:"ack,omitempty"`
	// Error is why the report did not get through.
	Error string `json:"error,omitempty"`
}

// String is the one-line form for the human views.
func (a *HostAck) String() string {
	switch {
	case a == nil:
		return "n/a (no channel)"
	case a.Acknowledged && a.Ack != "":
		return "yes: " + a.Ack
	case a.Acknowledged:
		return "yes"
	case a.Error != "":
		return "no: " + a.Error
	}
	return "no"
}

// hostAck reads the acknowledgement from the report's channel step.
func hostAck(rep agent.Report) *HostAck {
	f := rep.Fetch
	if f == nil {
		return nil
	}
	a := &HostAck{Reported: f.Reported, Acknowledged: f.Acknowledged, Ack: f.Ack, Error: f.ReportError}
	if a.Error == "" && !a.Reported && f.Error != "" {
		a.Error = "the session failed before its report went out"
	}
	return a
}

// statusFile is the last load's report as read from the status file.
type statusFile struct {
	raw json.RawMessage
	rep agent.Report
}

// readStatusFile reads and decodes the status file. On failure it returns
// the finding that says what to do, and an error carrying exit code 3.
func readStatusFile(in Inspector) (*statusFile, []Finding, error) {
	path := in.statusPath()
	f, err := os.Open(in.real(path))
	if err == nil {
		defer f.Close()
		err = checkWriters(f, in.real(path))
	}
	if err == nil {
		var b []byte
		b, err = io.ReadAll(io.LimitReader(f, maxStatusSize+1))
		if err == nil && len(b) > maxStatusSize {
			err = fmt.Errorf("read %s: over %d bytes", path, maxStatusSize)
		}
		if err == nil {
			sf := &statusFile{raw: b}
			if err = json.Unmarshal(b, &sf.rep); err == nil {
				return sf, nil, nil
			}
			err = fmt.Errorf("decode %s: %w", path, err)
		}
	}
	var fd Finding
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fd = Finding{Code: CodeStatusMissing, Severity: SeverityError,
			Message: fmt.Sprintf("no status file at %s: vmcred-guest.service has not run in this boot (or was pointed at another --status-dir)", path),
			Fix:     "run `systemctl status vmcred-guest` and `journalctl -b -u vmcred-guest`; if the unit is missing, install and enable it (`systemctl enable vmcred-guest`)"}
	case unreadable(err):
		fd = Finding{Code: CodeStatusUnreadable, Severity: SeverityError, Message: fmt.Sprintf("cannot read %s: permission denied", path), Fix: fixRunAsRoot}
	default:
		fd = Finding{Code: CodeStatusUnreadable, Severity: SeverityError, Message: err.Error(),
			Fix: "the next load or session writes a fresh report (`vmcred-host push` from the host, or `systemctl restart vmcred-guest`); if it stays unreadable, check the folder is not shared with another tool"}
	}
	return nil, []Finding{fd}, cli.WithCode(cli.ExitIO, fmt.Errorf("status: %w", err))
}

// errForgeable means the status file, or its folder, could have been
// written by a user other than root or the agent's: what it says may be
// forged, so it is not shown.
var errForgeable = errors.New("another user could have written it: not shown (the agent refuses such a folder; check who made it)")

// checkWriters refuses a status file that someone other than root or this
// user owns, or that group or others may write, in a folder of which the
// same holds. The agent writes it 0600 in a 0700 folder of its own (see
// agent.CheckStatusDir).
func checkWriters(f *os.File, path string) error {
	euid := os.Geteuid()
	check := func(what string, fi fs.FileInfo) error {
		uid, ok := ownerUID(fi)
		if !ok {
			return fmt.Errorf("%s: cannot tell the owner of %s: %w", path, what, errForgeable)
		}
		if uid != 0 && uid != euid {
			return fmt.Errorf("%s: %s is owned by uid %d: %w", path, what, uid, errForgeable)
		}
		if fi.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s: %s has mode %#o: %w", path, what, fi.Mode().Perm(), errForgeable)
		}
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := check("the file", fi); err != nil {
		return err
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	return check("its folder", di)
}

// reportFindings turns what the last load recorded into findings, each
// with its fix. trustFrom names the trust folder for the advice.
func reportFindings(rep agent.Report, trustFrom string) []Finding {
	var out []Finding
	fixLoad := fixRestartLoad
	if rep.Fetch != nil {
		// A session failed: the agent still listens; the host pushes again.
		fixLoad = fixPushAgain
	}
	rotationFailed := false
	if r := rep.Rotation; r != nil && r.Error != "" {
		// The new set is in place; a consumer did not come back.
		rotationFailed = true
		for _, u := range r.Units {
			if !u.OK {
				out = append(out, Finding{Code: CodeRotationConsumer, Severity: SeverityError,
					Message: fmt.Sprintf("the rotation to generation %d is in place, but %s (uses %s) did not come back after its %s: %s", r.To, u.Unit, strings.Join(u.Credentials, ", "), u.Action, u.Result),
					Fix:     fmt.Sprintf("run `systemctl status %s` and `journalctl -b -u %s`; once it starts with the new credentials, push again or restart it", u.Unit, u.Unit)})
			}
		}
		if len(out) == 0 {
			out = append(out, Finding{Code: CodeRotationConsumer, Severity: SeverityError,
				Message: fmt.Sprintf("the rotation to generation %d is in place, but its consumers were not restarted: %s", r.To, r.Error),
				Fix:     "see `journalctl -b -u vmcred-guest`; the agent needs systemd's private socket (/run/systemd/private) to restart services"})
		}
	}
	switch {
	case rep.Outcome == agent.OutcomeReady, rotationFailed:
	case rep.Outcome == agent.OutcomeWaiting:
		// Firmware brought nothing complete (Firecracker has none): the
		// agent waits for the host's session. Not a failure.
		out = append(out, Finding{Code: CodeLoadWaiting, Severity: SeverityInfo,
			Message: "the agent is waiting for the host's session (firmware brought no complete set)", Fix: fixChannel})
	default:
		out = append(out, Finding{Code: CodeLoadFailed, Severity: SeverityError,
			Message: fmt.Sprintf("the last load (%s) failed, so the credstore was left as it was and services that Require= vmcred-guest.service did not start", rep.StartedAt.UTC().Format(time.RFC3339)),
			Fix:     fixLoad})
	}
	// Problems tied to one credential are described from the credential's
	// own record below; the rest are the load's.
	perCred := map[string]bool{}
	for _, c := range rep.Credentials {
		if c.Problem != "" {
			perCred[c.Problem] = true
		}
	}
	for _, n := range rep.SystemCheck {
		perCred[fmt.Sprintf("credential %q: systemd's copy in ", n.Name)] = true
	}
	if rep.Fetch != nil && rep.Fetch.Error != "" {
		perCred[rep.Fetch.Error] = true
	}
	if r := rep.Rotation; r != nil && r.Error != "" {
		// Said per unit above.
		for _, p := range rep.Problems {
			if strings.Contains(p, r.Error) {
				perCred[p] = true
			}
		}
	}
	for _, p := range rep.Problems {
		if perCred[p] || hasKeyPrefix(perCred, p) || (rep.Fetch != nil && rep.Fetch.Error != "" && strings.Contains(p, rep.Fetch.Error)) {
			continue
		}
		switch {
		case strings.HasPrefix(p, agent.ManifestName+":"), strings.Contains(p, "no "+agent.ManifestName+" credential"):
			out = append(out, manifestFinding(p, trustFrom))
		case strings.HasPrefix(p, "source damaged: "):
			// Described from the sources below.
		case strings.Contains(p, "not on tmpfs or ramfs"):
			out = append(out, Finding{Code: CodeCredstorePersistent, Severity: SeverityError, Message: p,
				Fix: "mount a tmpfs on the credstore folder (systemd's RuntimeDirectory= under /run does), or pass --allow-persistent if a disk is acceptable"})
		default:
			out = append(out, Finding{Code: CodeLoadProblem, Severity: SeverityError, Message: p,
				Fix: "see `journalctl -b -u vmcred-guest` for the full story, then " + fixLoad})
		}
	}
	for _, c := range rep.Credentials {
		switch c.Verification {
		case "missing":
			out = append(out, missingFinding(c.Name, uint64(c.Size), c.Delivery))
		case "mismatch":
			out = append(out, mismatchFinding(c.Name, strings.TrimPrefix(c.Problem, fmt.Sprintf("credential %q: ", c.Name))))
		case "not-in-manifest":
			out = append(out, unlistedFinding(c.Name, c.Problem != agent.NotExposed))
		case "fetch-failed":
			out = append(out, Finding{Code: CodeChannelFetch, Severity: SeverityError, Credential: c.Name, Message: c.Problem, Fix: fixChannel})
		case "unexpected":
			out = append(out, Finding{Code: CodeCredentialUnexpected, Severity: SeverityError, Credential: c.Name, Message: c.Problem,
				Fix: "the host sent something the manifest does not say it would: repack and restart the VM with one vmcred-host version on both ends"})
		}
	}
	if f := rep.Fetch; f != nil {
		if f.Error != "" && !slices.ContainsFunc(rep.Credentials, func(c agent.CredentialResult) bool { return c.Verification == "fetch-failed" }) {
			out = append(out, Finding{Code: CodeChannelFetch, Severity: SeverityWarning, Message: fmt.Sprintf("the host's session from %s failed: %s (no credential depended on it)", f.Address, f.Error), Fix: fixChannel})
		}
		if !f.Acknowledged && f.ReportError != "" {
			out = append(out, Finding{Code: CodeChannelReport, Severity: SeverityWarning,
				Message: "the host did not acknowledge the report: " + f.ReportError,
				Fix:     "the host's push may have ended before it read the report: its log and `vmcred-host wait --vm NAME` on the host say what it saw; push again if it failed"})
		}
	}
	for _, n := range rep.SystemCheck {
		if n.Status == "skipped" {
			out = append(out, Finding{Code: CodeSystemdAbsent, Severity: SeverityInfo, Message: n.Advice, Fix: "nothing to do"})
			continue
		}
		if f, ok := systemdFinding(n.Name, n.Status, n.Size, n.SystemSize, systemDirOf(rep, n.Name)); ok {
			out = append(out, f)
		}
	}
	out = append(out, sourceFindings(rep.Sources)...)
	out = append(out, skippedFindings(fromAgentSkipped(rep.Skipped))...)
	return out
}

func hasKeyPrefix(m map[string]bool, s string) bool {
	for k := range m {
		if strings.HasPrefix(s, k) {
			return true
		}
	}
	return false
}

// systemDirOf guesses the @system folder of a report from a served path,
// for the advice text; the default otherwise.
func systemDirOf(rep agent.Report, name string) string {
	for _, c := range rep.Credentials {
		if c.Name == name && c.Served != "" && c.Served != c.Exposed {
			return filepath.Dir(c.Served)
		}
	}
	return DefaultSystemCredentials
}

func fromAgentSkipped(in []agent.Skipped) []Skipped {
	out := make([]Skipped, 0, len(in))
	for _, s := range in {
		if s.Count > 0 {
			out = append(out, Skipped{Reason: s.Reason, Count: s.Count})
			continue
		}
		out = append(out, Skipped{Index: ptr(s.Index), Source: s.Source, Name: s.Name, Reason: s.Reason, Detail: s.Detail})
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// Status is the output of `vmcred-guest status`: the last load's report.
type Status struct {
	// StatusFile is the file read.
	StatusFile string `json:"status_file"`
	// Report is the status file verbatim (agent.Report's JSON); null when
	// it could not be read.
	Report json.RawMessage `json:"report"`
	// HostAck is the host's acknowledgement of the report, null when the
	// load used no channel.
	HostAck *HostAck `json:"host_ack"`
	// Findings are the report's problems, each with what to do.
	Findings []Finding `json:"findings"`

	rep *agent.Report
	in  Inspector
}

// ReadStatus reads the last load's report. The error carries exit code 3
// when the status file cannot be read and 1 when the last load failed or
// the agent still waits for the host's session; the
// Status is worth printing either way.
func ReadStatus(in Inspector, trustFrom string) (Status, error) {
	st := Status{StatusFile: in.statusPath(), Report: json.RawMessage("null"), Findings: []Finding{}, in: in}
	sf, fds, err := readStatusFile(in)
	if err != nil {
		st.Findings = fds
		return st, err
	}
	st.Report, st.HostAck, st.rep = compactJSON(sf.raw), hostAck(sf.rep), &sf.rep
	st.Findings = sortFindings(append(st.Findings, reportFindings(sf.rep, trustFrom)...))
	switch sf.rep.Outcome {
	case agent.OutcomeReady:
	case agent.OutcomeWaiting:
		return st, cli.WithCode(cli.ExitFailure, fmt.Errorf("not ready yet: the agent is waiting for the host's session (%s)", st.StatusFile))
	default:
		return st, cli.WithCode(cli.ExitFailure, fmt.Errorf("the last load failed (%s)", st.StatusFile))
	}
	return st, nil
}

// compactJSON drops a JSON document's layout, keeping its key order, so
// the JSON writer can indent it in place.
func compactJSON(b []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return json.RawMessage("null")
	}
	return buf.Bytes()
}

// WriteJSON writes st as one indented JSON object.
func (st Status) WriteJSON(w io.Writer) error { return writeJSON(w, st) }

// WriteText writes st for a person on an 80-column console.
func (st Status) WriteText(w io.Writer) error {
	if st.rep == nil {
		kv(w, "Last load", "n/a")
		kv(w, "Status file", st.StatusFile)
		writeFindings(w, st.Findings)
		return nil
	}
	rep := st.rep
	kv(w, "Outcome", rep.Outcome)
	kv(w, "Summary", rep.Summary)
	kv(w, "Started", fmt.Sprintf("%s by vmcred-guest %s", rep.StartedAt.UTC().Format(time.RFC3339), orNA(rep.Version)))
	policy := rep.Policy
	if slices.ContainsFunc(rep.Credentials, func(c agent.CredentialResult) bool { return c.Verification == "refused" }) {
		policy = "none: the manifest was not accepted"
	}
	if rep.KeyID != "" {
		policy += ", ed25519 key " + rep.KeyID
	}
	kv(w, "Policy", policy)
	switch rep.ManifestSource {
	case agent.ManifestFromFirmware:
		kv(w, "Manifest", "from firmware")
	case agent.ManifestFromSession:
		kv(w, "Manifest", "from the host's session, saved as "+filepath.Join(filepath.Dir(st.StatusFile), agent.ManifestFile))
	}
	kv(w, "VM", orNA(rep.VM))
	kv(w, "Generation", generationText(rep.Generation, rep.StartedAt))
	writeRotation(w, rep.Rotation)
	na := "n/a"
	if rep.NotAfter != nil {
		na = rep.NotAfter.UTC().Format(time.RFC3339)
	}
	kv(w, "Not after", na)
	kv(w, "Channel", channelText(rep))
	kv(w, "Host ack", st.HostAck.String())
	store := rep.Credstore
	if rep.Store != nil {
		store += fmt.Sprintf(": %d written, %d replaced, %d removed, %d kept", len(rep.Store.Written), len(rep.Store.Replaced), len(rep.Store.Removed), len(rep.Store.Kept))
	} else {
		store += ": not written by this load"
	}
	kv(w, "Credstore", store)
	t := rep.Timings
	kv(w, "Timings", fmt.Sprintf("read %.1fms, verify %.1fms, fetch %.1fms, write %.1fms, total %.1fms", t.Read, t.Verify, t.Fetch, t.Write, t.Total))
	for i, s := range rep.Sources {
		key := ""
		if i == 0 {
			key = "Sources"
		}
		kv(w, key, describeSource(s.Kind, s.Path, s.Found, s.Structures, s.Strings))
	}
	kv(w, "Status file", st.StatusFile)

	fmt.Fprintln(w)
	tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "SOURCE"}, {head: "SIZE", right: true}, {head: "SHA256"}, {head: "VERIFIED"}, {head: "DELIVERY"}, {head: "SERVED AT LOAD"}}}
	for _, c := range rep.Credentials {
		servedAt := "-"
		if c.Served != "" {
			servedAt = st.in.displayDir(filepath.Dir(c.Served))
		}
		tb.add(printable(c.Name, wholeName), orDash(c.Source), humanSize(int64(c.Size)), short(c.SHA256), verifiedLabel(c.Verification), orDash(c.Delivery), servedAt)
	}
	if tb.write(w) {
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%s, %s.\n", plural(len(rep.Credentials), "credential"), plural(skippedCount(fromAgentSkipped(rep.Skipped)), "string")+" skipped")
	if len(rep.SystemCheck) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "systemd's own import, checked against the manifest:")
		for _, n := range rep.SystemCheck {
			if n.Name == "" {
				wrap(w, "  ", n.Status+": "+n.Advice)
				continue
			}
			s := n.Status
			if n.Status != "match" {
				s = fmt.Sprintf("%s (%d of %d bytes)", n.Status, n.SystemSize, n.Size)
			}
			wrap(w, "  ", printable(n.Name, 40)+": "+s)
		}
	}
	writeFindings(w, st.Findings)
	return nil
}

// generationText is the generation and when it arrived.
func generationText(gen uint64, at time.Time) string {
	if gen == 0 {
		return "n/a (the manifest carries none)"
	}
	return fmt.Sprintf("%d, arrived %s", gen, at.UTC().Format(time.RFC3339))
}

// writeRotation writes what the last rotation did: its generations, what
// changed in the credstore and each unit's outcome.
func writeRotation(w io.Writer, r *agent.Rotation) {
	if r == nil {
		kv(w, "Rotation", "none in this boot")
		return
	}
	kv(w, "Rotation", fmt.Sprintf("generation %d to %d at %s: %d changed, %d added, %d removed, %d unchanged", r.From, r.To, r.At.UTC().Format(time.RFC3339),
		len(r.Changed), len(r.Added), len(r.Removed), len(r.Unchanged)))
	if len(r.Units) == 0 {
		kv(w, "", "no running service uses a changed credential")
	}
	for _, u := range r.Units {
		line := fmt.Sprintf("%s %s (%s): %s", u.Action, printable(u.Unit, 64), strings.Join(u.Credentials, ", "), u.Result)
		kv(w, "", line)
	}
}

// channelText is the channel step in a line.
func channelText(rep *agent.Report) string {
	f := rep.Fetch
	switch {
	case f == nil:
		return "n/a"
	case f.Error != "":
		return fmt.Sprintf("session from %s refused (see below)", f.Address)
	}
	return fmt.Sprintf("session from %s: %s received", f.Address, plural(len(f.Received), "credential"))
}

// describeSource is one firmware source in a line.
func describeSource(kind, path string, found bool, structures, strs int) string {
	if !found {
		return kind + ": none in " + path
	}
	unit := "structure"
	if kind != "smbios" {
		unit = "entry"
	}
	return fmt.Sprintf("%s: %s, %s in %s", kind, plural(structures, unit), plural(strs, "string"), path)
}

// verifiedLabel shortens the agent's verification words for a table.
func verifiedLabel(v string) string {
	switch v {
	case "not-in-manifest":
		return "unlisted"
	case "":
		return "-"
	}
	return v
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
