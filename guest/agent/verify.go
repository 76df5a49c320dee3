package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// Policies: how the credentials of a load were checked.
const (
	// PolicySignature: a manifest signed by a trusted key listed each one.
	PolicySignature = "signature"
	// PolicyDigest: an unsigned manifest (no trust key configured) listed
	// each one with its size and SHA-256.
	PolicyDigest = "digest"
	// PolicyUnverified: no manifest; accepted because of --allow-unverified.
	PolicyUnverified = "unverified"
)

// SystemNote is the cross-check of one credential against the copy systemd
// imported itself into /run/credentials/@system.
type SystemNote struct {
	Name string `json:"name"`
	// Status is "match", "truncated", "dropped" or "differs".
	Status     string `json:"status"`
	Size       uint64 `json:"size"`
	SystemSize int64  `json:"system_size,omitempty"`
	// Fatal is true when services would get systemd's wrong copy.
	Fatal  bool   `json:"fatal"`
	Advice string `json:"advice"`
}

type verified struct {
	problems []string
	// needSession: the manifest lists credentials for the channel, which
	// only a host session brings.
	needSession bool
	expose      []credstore.Entry
	// envelope is the accepted manifest's signed bytes (saveManifest),
	// and m the manifest itself.
	envelope []byte
	m        *manifest.Manifest
	// store is what the credstore write did (set by load).
	store credstore.Result
}

// verify applies the policy to what arrived and decides what is exposed.
// It records each credential's outcome in rep. Problems are returned in
// the result; an error is returned only for what is not a policy matter.
// With a session, its manifest is checked against the session (see
// checkSession) and its channel values are checked like the others.
func verify(cfg Config, now time.Time, me *oemstring.Entry, delivered []oemstring.Entry, rep *Report, sess *sessionInput) (verified, error) {
	var v verified
	// Each credential is recorded once. One the manifest lists is hashed
	// once, for both the check and the record: a channel credential may be
	// 16 MiB.
	rep.Credentials = slices.Grow(rep.Credentials, len(delivered)+1)
	recordSum := func(e oemstring.Entry, sum [sha256.Size]byte, how, problem, delivery string) {
		rep.Credentials = append(rep.Credentials, CredentialResult{
			Name: e.Name, Size: e.Value.Len(), SHA256: hex.EncodeToString(sum[:]),
			Source: e.Source, Prefix: e.Prefix, Verification: how, Problem: problem, Delivery: delivery,
		})
	}
	record := func(e oemstring.Entry, how, problem, delivery string) {
		recordSum(e, e.Value.SHA256(), how, problem, delivery)
	}

	if me == nil {
		switch {
		case len(cfg.TrustKeys) > 0:
			v.problems = append(v.problems, "no "+ManifestName+" credential while a trust key is set: nothing can be verified, so nothing is exposed")
		case !cfg.AllowUnverified:
			v.problems = append(v.problems, "no "+ManifestName+" credential: nothing to verify against (vmcred-host pack adds one; pass --allow-unverified for guests fed by other tools)")
		}
		for _, e := range delivered {
			record(e, PolicyUnverified, "", "")
			v.expose = append(v.expose, credstore.Entry{Name: e.Name, Value: e.Value})
		}
		return v, nil
	}

	m, ver, err := manifest.Open(me.Value.Reveal(), cfg.TrustKeys)
	if err != nil {
		v.problems = append(v.problems, ManifestName+": "+err.Error())
		for _, e := range delivered {
			record(e, "refused", "manifest not accepted", "")
		}
		return v, nil
	}
	v.envelope, v.m = me.Value.Reveal(), m
	rep.Policy = PolicyDigest
	if ver.Trusted {
		rep.Policy = PolicySignature
		rep.KeyID = ver.KeyID
	} else {
		rep.SignedBy = ver.KeyID
	}
	rep.VM, rep.Generation = m.VM, m.Generation
	if !m.NotAfter.IsZero() {
		t := m.NotAfter.UTC()
		rep.NotAfter = &t
	}
	if err := m.Check(now, cfg.VM); err != nil {
		v.problems = append(v.problems, ManifestName+": "+err.Error())
	}
	if cfg.VM == "" && !cfg.AllowAnyVM {
		v.problems = append(v.problems, fmt.Sprintf("%s: issued for vm %q, but this load was not told its VM name: pass --vm NAME (the name `vmcred-host pack --vm` used) or write it to /etc/vmcred/vm-name, or pass --allow-any-vm to accept a manifest issued for any VM", ManifestName, m.VM))
	}
	if sess != nil {
		if p := sess.check(cfg, m, ver); p != "" {
			v.problems = append(v.problems, ManifestName+": "+p)
		}
	} else if m.HasChallenge() {
		// Only a session's manifest is signed over a challenge; one in
		// firmware was copied out of a session.
		v.problems = append(v.problems, ManifestName+": signed for a host session (it has a challenge), not for firmware: refused")
	}

	byName := make(map[string]oemstring.Entry, len(delivered))
	for _, e := range delivered {
		if sess != nil {
			// A session supersedes what firmware brought at boot for
			// every credential it sends itself.
			if entry, ok := m.Lookup(e.Name); ok && entry.Delivery == manifest.DeliveryChannel {
				continue
			}
		}
		byName[e.Name] = e
	}
	if sess != nil {
		for _, e := range sess.creds {
			entry, listed := m.Lookup(e.Name)
			var p string
			switch {
			case !listed:
				p = fmt.Sprintf("credential %q arrived in the session but is not in the manifest", e.Name)
			case entry.Delivery != manifest.DeliveryChannel:
				p = fmt.Sprintf("credential %q arrived in the session but the manifest says it goes by %s", e.Name, entry.Delivery)
			}
			if p != "" {
				v.problems = append(v.problems, p)
				record(e, "unexpected", p, SourceChannel)
				continue
			}
			byName[e.Name] = e
		}
	}
	listed := make(map[string]bool, len(m.Entries))
	for _, me := range m.Entries {
		listed[me.Name] = true
		e, ok := byName[me.Name]
		if !ok {
			p := fmt.Sprintf("credential %q is listed in the manifest (%d bytes, by %s) but did not arrive", me.Name, me.Size, me.Delivery)
			how := "missing"
			if me.Delivery == manifest.DeliveryChannel && sess == nil {
				p = fmt.Sprintf("credential %q is listed in the manifest (%d bytes) for the host's session, which a load from firmware alone does not have (vmcred-guest agent accepts it)", me.Name, me.Size)
				how = "awaiting-session"
				v.needSession = true
			}
			v.problems = append(v.problems, p)
			rep.Credentials = append(rep.Credentials, CredentialResult{Name: me.Name, Size: int(me.Size), SHA256: hex.EncodeToString(me.SHA256[:]), Verification: how, Problem: p, Delivery: me.Delivery.String()})
			continue
		}
		sum := e.Value.SHA256()
		if err := me.MatchesDigest(uint64(e.Value.Len()), sum); err != nil {
			v.problems = append(v.problems, err.Error())
			recordSum(e, sum, "mismatch", err.Error(), me.Delivery.String())
			continue
		}
		recordSum(e, sum, rep.Policy, "", me.Delivery.String())
		v.expose = append(v.expose, credstore.Entry{Name: e.Name, Value: e.Value})
	}
	for _, e := range delivered {
		if listed[e.Name] {
			continue
		}
		// A string in vmcred's own namespace that the manifest does not
		// list was put there by someone other than the host's launcher:
		// refuse the load. One under systemd's prefixes may come from
		// another tool (microvm.nix adds vmm.notify_socket itself); it is
		// reported and not exposed, and systemd imports it as it would
		// without vmcred. A session's manifest may leave out what the
		// firmware brought at boot (a credential the host retired).
		if e.Prefix == oemstring.PrefixVmcred && sess == nil {
			p := fmt.Sprintf("credential %q arrived under vmcred's prefix but is not in the manifest", e.Name)
			v.problems = append(v.problems, p)
			record(e, "not-in-manifest", p, "")
			continue
		}
		record(e, "not-in-manifest", "not in the manifest: not exposed in the credstore", "")
	}
	if cfg.SystemCredentials != "" {
		crossCheck(cfg.SystemCredentials, m, byName, rep, &v)
	}
	return v, nil
}

// crossCheck compares what systemd imported into dir (/run/credentials/
// @system) with the manifest. systemd 252–256 read only one 4 KiB page of
// each type-11 structure, so it can hold a truncated copy or none at all;
// because LoadCredential= searches @system before /run/credstore, a wrong
// copy there is what services would get.
func crossCheck(dir string, m *manifest.Manifest, delivered map[string]oemstring.Entry, rep *Report, v *verified) {
	if _, err := os.Stat(dir); err != nil {
		rep.SystemCheck = append(rep.SystemCheck, SystemNote{Status: "skipped", Advice: dir + " is missing: systemd imported no credentials (older than 252, or systemd.import_credentials=no), so the credstore copies are the ones services get"})
		return
	}
	for _, me := range m.Entries {
		e, ok := delivered[me.Name]
		if !ok {
			continue
		}
		systemdSees := e.Prefix == oemstring.PrefixText || e.Prefix == oemstring.PrefixBinary || e.Source == "fw_cfg"
		got, size, err := ReadFileCapped(filepath.Join(dir, me.Name), int64(me.Size)+1)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if systemdSees {
				rep.SystemCheck = append(rep.SystemCheck, SystemNote{Name: me.Name, Status: "dropped", Size: me.Size,
					Advice: "systemd did not import it (systemd 252–256 read only 4 KiB of OEM strings); LoadCredential= falls back to the verified copy in the credstore"})
			}
			continue
		case err != nil:
			v.problems = append(v.problems, fmt.Sprintf("cross-check credential %q: %v", me.Name, err))
			continue
		}
		path := filepath.Join(dir, me.Name)
		if me.Matches(credential.NewSecret(got)) == nil {
			rep.SystemCheck = append(rep.SystemCheck, SystemNote{Name: me.Name, Status: "match", Size: me.Size, SystemSize: size, Advice: "systemd's copy is intact"})
			setServed(rep, me.Name, path)
			continue
		}
		status := "differs"
		if int64(len(got)) < int64(me.Size) && bytes.HasPrefix(e.Value.Reveal(), got) {
			status = "truncated"
		}
		note := SystemNote{Name: me.Name, Status: status, Size: me.Size, SystemSize: size}
		switch {
		case me.Name == ManifestName:
			note.Advice = "only vmcred reads the manifest; no service is affected"
		default:
			note.Fatal = true
			setServed(rep, me.Name, path)
			if status == "truncated" {
				note.Advice = fmt.Sprintf("systemd cut it to %d of %d bytes in %s, and LoadCredential=%s hands services that short copy; pack with --mode verified so only the agent's verified copy in the credstore is used", size, me.Size, dir, me.Name)
			} else {
				note.Advice = fmt.Sprintf("%s holds a different %s, which LoadCredential= finds before the credstore; remove the other source of that name", dir, me.Name)
			}
			v.problems = append(v.problems, fmt.Sprintf("credential %q: systemd's copy in %s is %s (%d of %d bytes)", me.Name, dir, status, size, me.Size))
		}
		rep.SystemCheck = append(rep.SystemCheck, note)
	}
}

func setServed(rep *Report, name, path string) {
	for i := range rep.Credentials {
		if rep.Credentials[i].Name == name {
			rep.Credentials[i].Served = path
		}
	}
}

// ReadFileCapped reads at most max bytes of the regular file at path, not
// following a final symlink, and returns them with the file's size. The
// cross-check and the debug views compare the bytes and never print them.
func ReadFileCapped(path string, max int64) ([]byte, int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, max))
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", path, err)
	}
	return b, st.Size(), nil
}
