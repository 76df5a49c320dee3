package agent

import (
	"bytes"
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

// verify applies the policy (Check) to what arrived and decides what is
// exposed. It records each credential's outcome in rep. Problems are
// returned in the result; an error is returned only for what is not a
// policy matter. With a session, its manifest is bound to the session's
// connection and its channel values are checked like the others.
func verify(cfg Config, now time.Time, me *oemstring.Entry, delivered []oemstring.Entry, rep *Report, sess *sessionInput) (verified, error) {
	in := Input{Firmware: delivered}
	if me != nil {
		in.Manifest = me.Value.Reveal()
	}
	if sess != nil {
		in.Session, in.Channel = true, sess.creds
		in.Binding = &Binding{Challenge: sess.challenge, Generation: sess.generation, Rotation: sess.rotate}
	}
	res := Check(cfg.policy(), now, in)
	v := verified{problems: res.Problems, needSession: res.NeedSession}
	rep.Credentials = slices.Grow(rep.Credentials, len(res.Credentials))
	for _, c := range res.Credentials {
		rep.Credentials = append(rep.Credentials, CredentialResult{Name: c.Name, Size: int(c.Size), SHA256: hex.EncodeToString(c.SHA256[:]),
			Source: c.Source, Prefix: c.Prefix, Verification: c.Verdict, Problem: c.Problem, Delivery: c.Delivery})
		if c.Accepted() && c.Value != nil {
			v.expose = append(v.expose, credstore.Entry{Name: c.Name, Value: c.Value.Value})
		}
	}
	if res.Manifest == nil || res.Refused != nil {
		return v, nil
	}
	m := res.Manifest
	v.envelope, v.m = in.Manifest, m
	rep.Policy = PolicyDigest
	if res.Trusted {
		rep.Policy = PolicySignature
		rep.KeyID = res.KeyID
	} else {
		rep.SignedBy = res.KeyID
	}
	rep.VM, rep.Generation = m.VM, m.Generation
	if !m.NotAfter.IsZero() {
		t := m.NotAfter.UTC()
		rep.NotAfter = &t
	}
	if cfg.SystemCredentials != "" {
		byName := make(map[string]oemstring.Entry, len(res.Credentials))
		for _, c := range res.Credentials {
			if c.Value != nil && c.Verdict != VerdictUnexpected && c.Verdict != VerdictNotInManifest {
				byName[c.Name] = *c.Value
			}
		}
		crossCheck(cfg.SystemCredentials, m, byName, rep, &v)
	}
	return v, nil
}

// policy is the Policy cfg's flags give.
func (cfg Config) policy() Policy {
	return Policy{TrustKeys: cfg.TrustKeys, VM: cfg.VM, AllowAnyVM: cfg.AllowAnyVM, AllowUnverified: cfg.AllowUnverified}
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
