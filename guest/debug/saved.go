package debug

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// Where a view's manifest came from (the manifest_from fields).
const (
	// ManifestFromFirmware: the vmcred.manifest credential in the live
	// firmware.
	ManifestFromFirmware = "firmware"
	// ManifestFromSaved: the copy the last load saved in the status folder
	// (agent.ManifestFile): the one the agent accepted in a host session.
	ManifestFromSaved = "saved"
)

// savedNeedsKey is why a saved manifest is refused without trust keys.
const savedNeedsKey = "it came in the host's session with the values it vouches for, so only a signature by a trusted key can verify it, and no trust keys were given"

// liveManifest is the manifest a view checks, and where it came from.
type liveManifest struct {
	entry    *oemstring.Entry // nil when there is none
	from     string           // ManifestFromFirmware, ManifestFromSaved, or "" for none
	file     string           // the saved copy, as the guest names it
	findings []Finding        // why the saved copy could not be read
	err      error            // the same, for an exit code
}

// findManifest picks the manifest the views check: the one the agent
// accepted, whichever way it came, so that the debug views and the agent
// apply one policy to the same manifest. After a host session the agent
// keeps that session's manifest in the status folder (and removes it
// after a load from firmware alone), so a saved copy wins; otherwise the
// manifest in the live firmware is the one the host passed this boot.
func findManifest(in Inspector, fw firmware.Report, fwErr error) liveManifest {
	if lm := in.savedManifest(); lm.entry != nil || lm.err != nil {
		return lm
	}
	for i, e := range fw.Parsed.Entries {
		if e.Name == agent.ManifestName {
			return liveManifest{entry: &fw.Parsed.Entries[i], from: ManifestFromFirmware}
		}
	}
	return liveManifest{}
}

// savedManifest reads the copy of the manifest the last load saved, if
// there is one. Its bytes are only ever opened, never printed.
func (in Inspector) savedManifest() liveManifest {
	if in.StatusDir == "" {
		return liveManifest{}
	}
	path := filepath.Join(in.StatusDir, agent.ManifestFile)
	b, _, err := agent.ReadFileCapped(in.real(path), agent.MaxManifestFile+1)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return liveManifest{}
	case err == nil && len(b) > agent.MaxManifestFile:
		err = fmt.Errorf("over %d bytes", agent.MaxManifestFile)
	}
	if err != nil {
		reason := strings.ReplaceAll(err.Error(), in.real(path), path)
		if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
			reason = pe.Err.Error()
		}
		fd := Finding{Code: CodeStatusUnreadable, Severity: SeverityError, Credential: agent.ManifestName,
			Message: fmt.Sprintf("cannot read %s, the manifest the last load saved: %s", path, reason),
			Fix:     "check the file with `ls -l`; the agent writes a regular file, mode 0600, root"}
		if unreadable(err) {
			fd.Message = fmt.Sprintf("cannot read %s, the manifest the last load saved: permission denied", path)
			fd.Fix = fixRunAsRoot
		}
		return liveManifest{file: path, findings: []Finding{fd}, err: fmt.Errorf("read saved manifest %s: %w", path, err)}
	}
	e := oemstring.Entry{Name: agent.ManifestName, Value: credential.NewSecret(b), Source: agent.SourceChannel}
	return liveManifest{entry: &e, from: ManifestFromSaved, file: path}
}

// check runs the agent's policy (agent.Check) on the manifest and the
// firmware credentials: a saved copy as the session manifest it was, with
// no values at hand for what came by channel (the credstore holds them).
func (lm liveManifest) check(pol Policy, now time.Time, firmware []oemstring.Entry) agent.Result {
	in := agent.Input{Firmware: firmware, Session: lm.from == ManifestFromSaved}
	if lm.entry != nil {
		in.Manifest = lm.entry.Value.Reveal()
	}
	return agent.Check(agent.Policy{TrustKeys: pol.TrustKeys, VM: pol.VM, AllowAnyVM: pol.AllowAnyVM, AllowUnverified: pol.AllowUnverified}, now, in)
}

// finding turns why the manifest was refused (by open or Check) into a
// finding; for a saved copy it names the file.
func (lm liveManifest) finding(err error, trustFrom string) Finding {
	if lm.from != ManifestFromSaved {
		return manifestFinding(agent.ManifestName+": "+err.Error(), trustFrom)
	}
	where := lm.file + " (the manifest the agent accepted from the host's last session)"
	if errors.Is(err, agent.ErrSessionUntrusted) {
		return Finding{Code: CodeNoTrustKeys, Severity: SeverityError, Credential: agent.ManifestName,
			Message: where + " was not checked: " + savedNeedsKey,
			Fix:     "pass --trust-key " + DefaultTrustDir + " (the folder vmcred-guest.service trusts) or the host's PREFIX.pub"}
	}
	f := manifestFinding(agent.ManifestName+": "+err.Error(), trustFrom)
	f.Message = where + ": " + f.Message
	switch f.Code {
	case CodeManifestBadSignature, CodeManifestInvalid, CodeManifestUnsigned:
		f.Fix = fmt.Sprintf("the file changed after the agent accepted it: find what wrote to %s (root's alone); vmcred-host push makes the agent save a fresh one", lm.file)
	}
	return f
}

// describeManifest is how the human views name a manifest's standing.
func describeManifest(policy, keyID string) string {
	switch {
	case policy == "refused":
		s := "refused (see below)"
		if keyID != "" {
			s += ", signed by ed25519 key " + keyID
		}
		return s
	case policy == agent.PolicySignature:
		return "signed by trusted ed25519 key " + keyID
	case policy == agent.PolicyDigest && keyID != "":
		return "signed by ed25519 key " + keyID + ", signature not checked (no trust keys)"
	case policy == agent.PolicyDigest:
		return "unsigned, digests only"
	case policy == agent.PolicyUnverified:
		return "none (--allow-unverified: compared with the firmware's values)"
	}
	return "none"
}

// savedText is the line the human views add for a saved copy.
func savedText(file string) string {
	return "from " + file + ", the copy the agent saved from the host's last session"
}
