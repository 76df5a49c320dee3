package agent

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// Verdicts of one credential (CredentialResult.Verification) other than
// the policy it passed under (PolicySignature, PolicyDigest,
// PolicyUnverified).
const (
	VerdictMissing         = "missing"
	VerdictAwaitingSession = "awaiting-session"
	VerdictMismatch        = "mismatch"
	VerdictNotInManifest   = "not-in-manifest"
	VerdictUnexpected      = "unexpected"
	VerdictRefused         = "refused"
)

// NotExposed is the problem of a credential the manifest does not list
// that does not fail the set: it is reported and not exposed.
const NotExposed = "not in the manifest: not exposed in the credstore"

// Reasons a manifest is not accepted or a check of it failed, besides the
// errors of manifest.Open and manifest.Check. Check's Manifest problems
// wrap them; the debug views match them with errors.Is.
var (
	// ErrNoManifest: no manifest while one is required.
	ErrNoManifest = errors.New("no " + ManifestName + " credential")
	// ErrNoVMName: the checker was not told its VM's name.
	ErrNoVMName = errors.New("no vm name to check the manifest against")
	// ErrSessionUntrusted: a session's manifest not signed by a trusted key.
	ErrSessionUntrusted = errors.New("a session's manifest must be signed by a trusted key (--trust-key): refused")
	// ErrNotThisSession: a session's manifest signed for another challenge.
	ErrNotThisSession = errors.New("not signed for this session (its challenge is another one: a replayed or stale session): refused")
	// ErrOlderGeneration: a session's manifest older than the agent's set.
	ErrOlderGeneration = errors.New("older generation than the agent holds: refused")
	// ErrSessionNoVM: an agent with no VM name to bind a session to.
	ErrSessionNoVM = errors.New("the agent has no --vm name to check the session's manifest against: refused")
	// ErrSessionInFirmware: a manifest signed over a challenge, in firmware.
	ErrSessionInFirmware = errors.New("signed for a host session (it has a challenge), not for firmware: refused")
)

// Policy is what a manifest and the credentials are checked against: the
// agent's Config and the debug commands' flags both come down to it.
type Policy struct {
	// TrustKeys, when any are given, make a signature by one of them
	// required.
	TrustKeys []ed25519.PublicKey
	// VM is this VM's name; AllowAnyVM accepts any when it is empty.
	VM         string
	AllowAnyVM bool
	// AllowUnverified accepts credentials without a manifest.
	AllowUnverified bool
}

// Binding ties a session's manifest to the live connection it came on.
type Binding struct {
	Challenge [proto.ChallengeSize]byte
	// Generation is the one the agent holds; the manifest may not be older.
	Generation uint64
	// Rotation: the agent already exposed a set this boot, so the
	// manifest must bring a higher generation, not the same one.
	Rotation bool
}

// Input is what one check looks at. It holds values (for the digests) and
// never renders them.
type Input struct {
	// Manifest is the envelope's bytes; nil when there is none.
	Manifest []byte
	// Session says the manifest came in a host session: a live one
	// (Binding set) or the copy the agent saved from one (Binding nil:
	// the connection it was bound to is gone).
	Session bool
	Binding *Binding
	// Firmware is what firmware delivered, the manifest left out.
	Firmware []oemstring.Entry
	// Channel is what a live session (Binding set) sent. Without a live
	// session no channel values are at hand (a firmware load, or a debug
	// view of a saved session manifest): a channel credential is then
	// VerdictAwaitingSession, not missing.
	Channel []oemstring.Entry
}

// Verdict is the outcome of one credential. Value is what arrived (nil
// for one listed that did not); nothing here is rendered from it.
type Verdict struct {
	Name     string
	Size     uint64
	SHA256   [sha256.Size]byte
	Source   string
	Prefix   string
	Delivery string
	// Verdict is the policy it passed under, or a Verdict… constant.
	Verdict string
	Problem string
	// Fails is true when the problem fails the whole set.
	Fails bool
	// Value is the delivered credential, when one arrived.
	Value *oemstring.Entry
}

// Accepted reports whether the credential passed and may be exposed.
func (v Verdict) Accepted() bool {
	return v.Problem == "" && (v.Verdict == PolicySignature || v.Verdict == PolicyDigest || v.Verdict == PolicyUnverified)
}

// Result is the outcome of Check.
type Result struct {
	// Policy is PolicySignature, PolicyDigest or PolicyUnverified; ""
	// when the manifest was refused or is missing while required.
	Policy string
	// KeyID is the signing key's ID when the envelope is signed; Trusted
	// says a trusted key verified it.
	KeyID   string
	Trusted bool
	// Manifest is the manifest read: the accepted one, or when it was
	// refused, its unverified decoding (for display), or nil.
	Manifest *manifest.Manifest
	// Refused is why the manifest was not accepted at all.
	Refused error
	// ManifestProblems are the manifest's own problems (Refused among
	// them), each wrapping ErrNoManifest, a manifest error or one above.
	ManifestProblems []error
	// Problems is every problem, in the order the load reports them.
	Problems []string
	// Credentials has the session's unexpected values, one verdict per
	// manifest entry, then the unlisted firmware credentials. When
	// Refused, it has the delivered ones, each VerdictRefused, and
	// Unverified compares them with the refused manifest's digests.
	Credentials []Verdict
	Unverified  []Verdict
	// NeedSession: the manifest lists credentials for the channel and no
	// session values were at hand.
	NeedSession bool
}

// Check is vmcred's one verification policy: the agent's firmware load,
// its host sessions, and `vmcred-guest verify`, `list` and `show` all
// call it, so they cannot disagree. It is a pure function of its
// arguments: it reads no file and no clock.
func Check(pol Policy, now time.Time, in Input) Result {
	var r Result
	manifestProblem := func(err error) {
		r.ManifestProblems = append(r.ManifestProblems, err)
		r.Problems = append(r.Problems, ManifestName+": "+err.Error())
	}
	if in.Manifest == nil {
		var p string
		switch {
		case len(pol.TrustKeys) > 0:
			p = "no " + ManifestName + " credential while a trust key is set: nothing can be verified, so nothing is exposed"
		case !pol.AllowUnverified:
			p = "no " + ManifestName + " credential: nothing to verify against (vmcred-host pack adds one; pass --allow-unverified for guests fed by other tools)"
		}
		if p != "" {
			r.ManifestProblems = append(r.ManifestProblems, problem{ErrNoManifest, p})
			r.Problems = append(r.Problems, p)
		} else {
			r.Policy = PolicyUnverified
		}
		for i := range in.Firmware {
			r.Credentials = append(r.Credentials, seen(&in.Firmware[i], PolicyUnverified, "", ""))
		}
		return r
	}

	if e, err := manifest.ParseEnvelope(in.Manifest); err == nil && e.Signed() {
		r.KeyID = hex.EncodeToString(e.KeyID[:])
	}
	m, ver, err := manifest.Open(in.Manifest, pol.TrustKeys)
	if err == nil && in.Session {
		err = sessionRule(pol, m, ver, in.Binding)
	}
	if err != nil {
		r.Refused = err
		manifestProblem(err)
		if m == nil && len(pol.TrustKeys) > 0 {
			m, _, _ = manifest.Open(in.Manifest, nil)
		}
		r.Manifest = m
		for i := range in.Firmware {
			r.Credentials = append(r.Credentials, seen(&in.Firmware[i], VerdictRefused, "manifest not accepted", ""))
		}
		if m != nil {
			r.Unverified = match(m, PolicyDigest, in, &Result{})
		}
		return r
	}
	r.Manifest, r.Trusted = m, ver.Trusted
	r.Policy = PolicyDigest
	if ver.Trusted {
		r.Policy = PolicySignature
	}
	if err := m.Check(now, pol.VM); err != nil {
		manifestProblem(err)
	}
	if pol.VM == "" && !pol.AllowAnyVM {
		manifestProblem(problem{ErrNoVMName, fmt.Sprintf("issued for vm %q, but this load was not told its VM name: pass --vm NAME (the name `vmcred-host pack --vm` used) or write it to /etc/vmcred/vm-name, or pass --allow-any-vm to accept a manifest issued for any VM", m.VM)})
	}
	if !in.Session && m.HasChallenge() {
		// Only a session's manifest is signed over a challenge; one in
		// firmware was copied out of a session.
		manifestProblem(ErrSessionInFirmware)
	}
	r.Credentials = match(m, r.Policy, in, &r)
	return r
}

// sessionRule is the session's part of the policy: a trusted signature,
// for a named VM, and with a live connection, over its challenge and for
// a generation not older than the agent's (higher, for a rotation).
func sessionRule(pol Policy, m *manifest.Manifest, ver manifest.Verification, b *Binding) error {
	switch {
	case len(pol.TrustKeys) == 0 || !ver.Trusted:
		return ErrSessionUntrusted
	case pol.VM == "":
		return ErrSessionNoVM
	case b == nil:
		return nil
	case !m.HasChallenge() || m.Challenge != b.Challenge:
		return ErrNotThisSession
	case m.Generation < b.Generation:
		return problem{ErrOlderGeneration, fmt.Sprintf("generation %d is older than the %d this agent holds: refused", m.Generation, b.Generation)}
	case b.Rotation && m.Generation == b.Generation:
		return problem{ErrOlderGeneration, fmt.Sprintf("generation %d is the one this agent holds; a rotation must bring a higher one: refused", m.Generation)}
	}
	return nil
}

// problem is an error of kind (errors.Is) with its own text.
type problem struct {
	kind error
	msg  string
}

func (p problem) Error() string { return p.msg }
func (p problem) Unwrap() error { return p.kind }

func seen(e *oemstring.Entry, verdict, problem, delivery string) Verdict {
	return Verdict{Name: e.Name, Size: uint64(e.Value.Len()), SHA256: e.Value.SHA256(), Source: e.Source, Prefix: e.Prefix,
		Verdict: verdict, Problem: problem, Delivery: delivery, Value: e}
}

// match compares what arrived with m's entries under policy, adding the
// problems to r.
func match(m *manifest.Manifest, policy string, in Input, r *Result) []Verdict {
	out := make([]Verdict, 0, len(in.Firmware)+len(in.Channel))
	fail := func(v Verdict) Verdict {
		v.Fails = true
		r.Problems = append(r.Problems, v.Problem)
		return v
	}
	byName := make(map[string]*oemstring.Entry, len(in.Firmware)+len(in.Channel))
	for i, e := range in.Firmware {
		if in.Session {
			// A session supersedes what firmware brought at boot for
			// every credential it sends itself.
			if entry, ok := m.Lookup(e.Name); ok && entry.Delivery == manifest.DeliveryChannel {
				continue
			}
		}
		byName[e.Name] = &in.Firmware[i]
	}
	for i, e := range in.Channel {
		entry, listed := m.Lookup(e.Name)
		var p string
		switch {
		case !listed:
			p = fmt.Sprintf("credential %q arrived in the session but is not in the manifest", e.Name)
		case entry.Delivery != manifest.DeliveryChannel:
			p = fmt.Sprintf("credential %q arrived in the session but the manifest says it goes by %s", e.Name, entry.Delivery)
		}
		if p != "" {
			out = append(out, fail(seen(&in.Channel[i], VerdictUnexpected, p, SourceChannel)))
			continue
		}
		byName[e.Name] = &in.Channel[i]
	}
	listed := make(map[string]bool, len(m.Entries))
	for _, me := range m.Entries {
		listed[me.Name] = true
		e, ok := byName[me.Name]
		if !ok {
			v := Verdict{Name: me.Name, Size: me.Size, SHA256: me.SHA256, Verdict: VerdictMissing, Delivery: me.Delivery.String(),
				Problem: fmt.Sprintf("credential %q is listed in the manifest (%d bytes, by %s) but did not arrive", me.Name, me.Size, me.Delivery)}
			if me.Delivery == manifest.DeliveryChannel && in.Binding == nil {
				v.Problem = fmt.Sprintf("credential %q is listed in the manifest (%d bytes) for the host's session, which a load from firmware alone does not have (vmcred-guest agent accepts it)", me.Name, me.Size)
				v.Verdict = VerdictAwaitingSession
				r.NeedSession = true
			}
			out = append(out, fail(v))
			continue
		}
		v := seen(e, policy, "", me.Delivery.String())
		if err := me.MatchesDigest(v.Size, v.SHA256); err != nil {
			v.Verdict, v.Problem = VerdictMismatch, err.Error()
			v = fail(v)
		}
		out = append(out, v)
	}
	for i, e := range in.Firmware {
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
		if e.Prefix == oemstring.PrefixVmcred && !in.Session {
			out = append(out, fail(seen(&in.Firmware[i], VerdictNotInManifest, fmt.Sprintf("credential %q arrived under vmcred's prefix but is not in the manifest", e.Name), "")))
			continue
		}
		out = append(out, seen(&in.Firmware[i], VerdictNotInManifest, NotExposed, ""))
	}
	return out
}
