package channel

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// Protocol constants.
const (
	// ProtocolVersion is the CHALLENGE version this package speaks.
	ProtocolVersion = 2
	// ChallengeSize is the length of the agent's session challenge.
	ChallengeSize = 32
	// MaxBootIDLen bounds Challenge.BootID (the kernel's boot_id is 36 bytes).
	MaxBootIDLen = 64
	// MaxVersionLen bounds agent version strings.
	MaxVersionLen = 128
	// MaxCredentials bounds the credentials in one CREDENTIALS message.
	MaxCredentials = 4096
	// MaxReportEntries bounds the credentials in one REPORT.
	MaxReportEntries = 4096
	// MaxTextLen bounds Report.Summary, RemoteError.Text and the ACK status.
	MaxTextLen = 1024
	// MaxErrorTextLen bounds CredentialReport.Error.
	MaxErrorTextLen = 256
	// MaxTokenLen bounds Delivery and Verification values.
	MaxTokenLen = 32
	// DigestPrefixLen is how many bytes of a value's SHA-256 DigestPrefix
	// keeps: enough to tell values apart in a report, not a full digest.
	DigestPrefixLen = 8
)

// Challenge is the agent's opening message: it names the session the
// host's manifest must be signed for.
type Challenge struct {
	// Version is the protocol version; 0 is written as ProtocolVersion.
	Version uint16
	// Nonce is ChallengeSize fresh random bytes, drawn for this
	// connection only. It is not secret; the host signs over it, so a
	// manifest recorded from one session fails in every other.
	Nonce [ChallengeSize]byte
	// Generation is the generation of the credential set the agent holds
	// (0 before the first session).
	Generation uint64
	// BootID is the guest kernel's boot ID
	// (/proc/sys/kernel/random/boot_id without its newline), or empty.
	BootID string
	// AgentVersion is the agent's version string.
	AgentVersion string
}

// EncodeChallenge returns c's payload. It fails with ErrMalformed if a
// string is too long or not printable ASCII, or the nonce is all zero (a
// zero challenge marks a manifest that came by firmware).
func EncodeChallenge(c Challenge) ([]byte, error) {
	if c.Nonce == [ChallengeSize]byte{} {
		return nil, fmt.Errorf("encode challenge: nonce is all zero: %w", ErrMalformed)
	}
	if r := checkPrintable(c.BootID, MaxBootIDLen); r != "" {
		return nil, fmt.Errorf("encode challenge: boot ID: %s: %w", r, ErrMalformed)
	}
	if r := checkPrintable(c.AgentVersion, MaxVersionLen); r != "" {
		return nil, fmt.Errorf("encode challenge: agent version: %s: %w", r, ErrMalformed)
	}
	v := c.Version
	if v == 0 {
		v = ProtocolVersion
	}
	e := encoder{buf: make([]byte, 0, 2+ChallengeSize+8+2+len(c.BootID)+len(c.AgentVersion))}
	e.u16(v)
	e.bytes(c.Nonce[:])
	e.u64(c.Generation)
	e.str8(c.BootID)
	e.str8(c.AgentVersion)
	return e.buf, nil
}

// DecodeChallenge decodes a CHALLENGE payload. A version other than
// ProtocolVersion fails with ErrUnsupportedVersion, returning a Challenge
// with only Version set so the host can say which version it got.
func DecodeChallenge(p []byte) (Challenge, error) {
	d := decoder{b: p, msg: "challenge"}
	v := d.u16("version")
	if d.err == nil && v != ProtocolVersion {
		return Challenge{Version: v}, fmt.Errorf("decode challenge: version %d, want %d: %w", v, ProtocolVersion, ErrUnsupportedVersion)
	}
	c := Challenge{Version: v}
	copy(c.Nonce[:], d.take("nonce", ChallengeSize))
	if d.err == nil && c.Nonce == [ChallengeSize]byte{} {
		d.failf("nonce", "all zero")
	}
	c.Generation = d.u64("generation")
	c.BootID = d.str8("boot ID", MaxBootIDLen)
	if r := checkPrintable(c.BootID, MaxBootIDLen); r != "" {
		d.failf("boot ID", "%s", r)
	}
	c.AgentVersion = d.str8("agent version", MaxVersionLen)
	if r := checkPrintable(c.AgentVersion, MaxVersionLen); r != "" {
		d.failf("agent version", "%s", r)
	}
	if err := d.end(); err != nil {
		return Challenge{}, err
	}
	return c, nil
}

// EncodeManifest returns the MANIFEST payload: the signed envelope itself
// (package manifest decodes and verifies it). It fails with ErrMalformed
// on an empty envelope and ErrFrameTooLarge over MaxManifestSize.
func EncodeManifest(envelope []byte) ([]byte, error) {
	if len(envelope) == 0 {
		return nil, fmt.Errorf("encode manifest: empty envelope: %w", ErrMalformed)
	}
	if len(envelope) > MaxManifestSize {
		return nil, fmt.Errorf("encode manifest: %d bytes, over the %d-byte limit: %w", len(envelope), MaxManifestSize, ErrFrameTooLarge)
	}
	return envelope, nil
}

// DecodeManifest decodes a MANIFEST payload: any non-empty bytes, which
// the caller opens with manifest.Open.
func DecodeManifest(p []byte) ([]byte, error) {
	if len(p) == 0 {
		return nil, fmt.Errorf("decode manifest: empty envelope: %w", ErrMalformed)
	}
	return p, nil
}

// Credential is one credential sent over the channel.
type Credential struct {
	Name  string
	Value credential.Secret
}

// checkCredentials validates creds for sending and returns the payload size.
func checkCredentials(creds []Credential) (int, error) {
	return checkEntries(len(creds), func(i int) (string, int) { return creds[i].Name, creds[i].Value.Len() })
}

// checkEntries validates count credentials, whose name and value length
// at(i) gives, for sending and returns the payload size.
func checkEntries(count int, at func(i int) (string, int)) (int, error) {
	if count > MaxCredentials {
		return 0, fmt.Errorf("encode credentials: %d credentials, over the limit of %d: %w", count, MaxCredentials, ErrMalformed)
	}
	seen := make(map[string]bool, count)
	n := 4
	for i := range count {
		name, size := at(i)
		if err := credential.ValidateName(name); err != nil {
			return 0, fmt.Errorf("encode credentials: credential %d: %w: %w", i, err, ErrMalformed)
		}
		if seen[name] {
			return 0, fmt.Errorf("encode credentials: credential %d %q: name given twice: %w", i, name, ErrMalformed)
		}
		seen[name] = true
		if size < 0 {
			return 0, fmt.Errorf("encode credentials: credential %d %q: negative size: %w", i, name, ErrMalformed)
		}
		if size > MaxCredentialsSize {
			size = MaxCredentialsSize // over the limit below, without overflowing n
		}
		n += 1 + len(name) + 4 + size
		if n > MaxCredentialsSize {
			return 0, fmt.Errorf("encode credentials: over the %d-byte frame limit at credential %q: %w", MaxCredentialsSize, name, ErrFrameTooLarge)
		}
	}
	return n, nil
}

func encodeCredentials(e *encoder, creds []Credential) {
	e.u32(uint32(len(creds)))
	for _, c := range creds {
		e.str8(c.Name)
		e.u32(uint32(c.Value.Len()))
		e.bytes(c.Value.Reveal())
	}
}

// EncodeCredentials returns the CREDENTIALS payload for creds. Names must be
// valid (credential.ValidateName) and unique, there may be at most
// MaxCredentials, and the payload must fit MaxCredentialsSize. The result
// holds the values: wipe it when done.
func EncodeCredentials(creds []Credential) ([]byte, error) {
	n, err := checkCredentials(creds)
	if err != nil {
		return nil, err
	}
	e := encoder{buf: make([]byte, 0, n)}
	encodeCredentials(&e, creds)
	return e.buf, nil
}

// DecodeCredentials decodes a CREDENTIALS payload. The values alias p (no
// copy of a 16 MiB secret is made), so the caller must not change p
// afterwards.
func DecodeCredentials(p []byte) ([]Credential, error) {
	d := decoder{b: p, msg: "credentials"}
	count := d.u32("count")
	if d.err == nil && count > MaxCredentials {
		d.failf("count", "%d, over the limit of %d", count, MaxCredentials)
	}
	// Each credential takes at least 6 bytes, which bounds the allocation
	// by the payload's size as well as by MaxCredentials.
	if d.err == nil && uint64(count)*6 > uint64(len(p)-d.off) {
		d.failf("count", "%d credentials cannot fit in %d bytes", count, len(p)-d.off)
	}
	if d.err != nil {
		return nil, d.err
	}
	creds := make([]Credential, 0, count)
	seen := make(map[string]bool, count)
	for i := 0; i < int(count) && d.err == nil; i++ {
		field := fmt.Sprintf("credential %d", i)
		name := d.str8(field+" name", credential.MaxNameLen)
		if d.err != nil {
			break
		}
		if err := credential.ValidateName(name); err != nil {
			d.err = fmt.Errorf("decode credentials: %s: %w: %w", field, err, ErrMalformed)
			break
		}
		if seen[name] {
			d.failf(fmt.Sprintf("credential %d %q", i, name), "name given twice")
			break
		}
		seen[name] = true
		field = fmt.Sprintf("credential %q", name)
		size := d.u32(field + " value length")
		value := d.take(field+" value", int(size))
		creds = append(creds, Credential{Name: name, Value: credential.NewSecret(value)})
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return creds, nil
}

// ErrorCode says why a peer refused.
type ErrorCode uint16

// Error codes. A decoder accepts any non-zero code, so a newer host can add
// codes; String names the known ones.
const (
	CodeBadRequest         ErrorCode = 1 // malformed or unexpected message
	CodeUnsupportedVersion ErrorCode = 2 // CHALLENGE version not spoken
	CodeInternal           ErrorCode = 6 // the peer failed; retrying may help
	CodeUnavailable        ErrorCode = 7 // the agent is in another session; retry later
)

// String returns the code's name ("bad-token"), or "code N".
func (c ErrorCode) String() string {
	switch c {
	case CodeBadRequest:
		return "bad-request"
	case CodeUnsupportedVersion:
		return "unsupported-version"
	case CodeInternal:
		return "internal"
	case CodeUnavailable:
		return "unavailable"
	}
	return fmt.Sprintf("code %d", uint16(c))
}

// Retryable reports whether the host may dial again and retry.
func (c ErrorCode) Retryable() bool {
	return c == CodeInternal || c == CodeUnavailable
}

// RemoteError is an ERROR message: as a value to send, and as the error
// the Read methods return when the peer refused.
type RemoteError struct {
	Code ErrorCode
	// Text explains the refusal to a human. It must never include a
	// secret or anything derived from one.
	Text string
}

func (e *RemoteError) Error() string {
	if e.Text == "" {
		return fmt.Sprintf("peer refused: %s", e.Code)
	}
	return fmt.Sprintf("peer refused: %s: %s", e.Code, e.Text)
}

// Unwrap makes errors.Is(err, ErrRemote) true.
func (e *RemoteError) Unwrap() error { return ErrRemote }

// EncodeError returns the ERROR payload. The code must not be 0; text is
// made valid (see Report.Summary) and cut to MaxTextLen.
func EncodeError(code ErrorCode, text string) ([]byte, error) {
	if code == 0 {
		return nil, fmt.Errorf("encode error: code 0: %w", ErrMalformed)
	}
	text = sanitizeText(text, MaxTextLen)
	e := encoder{buf: make([]byte, 0, 4+len(text))}
	e.u16(uint16(code))
	e.str16(text)
	return e.buf, nil
}

// DecodeError decodes an ERROR payload.
func DecodeError(p []byte) (*RemoteError, error) {
	d := decoder{b: p, msg: "error"}
	code := ErrorCode(d.u16("code"))
	if d.err == nil && code == 0 {
		d.failf("code", "0")
	}
	text := d.str16("text", MaxTextLen)
	if r := checkText(text, MaxTextLen); d.err == nil && r != "" {
		d.failf("text", "%s", r)
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return &RemoteError{Code: code, Text: text}, nil
}

// Outcome is the agent's verdict.
type Outcome uint8

// Outcomes. The zero Outcome is invalid, so an agent must choose.
const (
	OutcomeReady  Outcome = 1
	OutcomeFailed Outcome = 2
)

// String returns "ready", "failed" or "outcome N".
func (o Outcome) String() string {
	switch o {
	case OutcomeReady:
		return "ready"
	case OutcomeFailed:
		return "failed"
	}
	return fmt.Sprintf("outcome %d", uint8(o))
}

// Delivery says how a credential reached the guest. Any value of at most
// MaxTokenLen bytes of [a-z0-9_-] may be sent, so the set can grow.
type Delivery string

// Deliveries the planner assigns (DESIGN §3).
const (
	DeliverySMBIOS  Delivery = "smbios"
	DeliveryFwCfg   Delivery = "fwcfg"
	DeliveryChannel Delivery = "channel"
)

// Verification says what the agent established about a credential. Like
// Delivery, any [a-z0-9_-] token of at most MaxTokenLen bytes may be sent.
type Verification string

// Verifications the agent reports.
const (
	VerifiedSignature  Verification = "signature"            // the signed manifest's digest matched
	VerifiedDigest     Verification = "digest"               // the unsigned manifest's digest matched
	Unverified         Verification = "unverified"           // no manifest entry to check against (allowed by policy)
	VerifyMissing      Verification = "missing"              // listed in the manifest, not found
	VerifyMismatch     Verification = "mismatch"             // size or digest differs from the manifest
	VerifyTruncated    Verification = "truncated-by-systemd" // systemd's copy is cut short or dropped
	VerifyUnlisted     Verification = "unlisted"             // found, but not in the manifest
	VerifyFetchFailed  Verification = "fetch-failed"         // a channel credential that never arrived
	VerifyInvalidValue Verification = "invalid"              // present but undecodable (bad base64, …)
)

// Timings are the agent's phase durations. They travel as whole
// milliseconds (cut down, clamped to 0 … 2³²-1 ms).
type Timings struct {
	Read, Verify, Fetch, Write, Total time.Duration
}

// CredentialReport is the agent's finding for one credential. It holds no
// value: a digest prefix identifies the value well enough.
type CredentialReport struct {
	Name string // credential.ValidateName; names may repeat
	Size uint64 // bytes found (or expected, when missing)
	// SHA256Prefix is lower-case hex of the first bytes of the value's
	// SHA-256 (DigestPrefix gives the usual 8), at most 64 digits, even;
	// empty when there is no value.
	SHA256Prefix string
	Delivery     Delivery
	Verification Verification
	// Error is what went wrong, or empty; free text like Report.Summary,
	// cut to MaxErrorTextLen.
	Error string
}

// Report is the agent's readiness report.
type Report struct {
	Outcome Outcome
	// Summary is one line for humans. Being free text, it is made valid
	// when encoded rather than refused: invalid UTF-8 and control
	// characters become U+FFFD (tab and newlines a space), and text over
	// MaxTextLen bytes is cut, ending in "…".
	Summary      string
	AgentVersion string // printable ASCII, at most MaxVersionLen bytes
	// Generation is the generation the agent holds after the session:
	// the manifest's when ready, its previous one when it refused.
	Generation  uint64
	Timings     Timings
	Credentials []CredentialReport
	// Units lists what a rotation did to the running services that use a
	// changed credential (at most MaxReportUnits); empty when the session
	// changed nothing a service uses, or was not a rotation.
	Units []UnitReport
}

// Limits of Report.Units.
const (
	// MaxReportUnits bounds the units in one REPORT.
	MaxReportUnits = 256
	// MaxUnitCredentials bounds UnitReport.Credentials.
	MaxUnitCredentials = 16
	// MaxUnitNameLen bounds UnitReport.Unit (systemd's own limit is 255).
	MaxUnitNameLen = 255
	// MaxResultLen bounds UnitReport.Result.
	MaxResultLen = 64
)

// UnitReport is what a rotation did to one service: names only, never a
// value.
type UnitReport struct {
	// Unit is the unit's name: printable ASCII, at most MaxUnitNameLen.
	Unit string
	// Action is the policy applied: "restart", "reload" or "none" (a
	// token).
	Action string
	// Credentials lists the changed credentials it uses (valid names, at
	// most MaxUnitCredentials; the agent keeps the first ones).
	Credentials []string
	// Result is "active" when the unit came back, "skipped" for policy
	// none, else what went wrong ("failed", "timeout", ...): free text
	// made valid when encoded, cut to MaxResultLen.
	Result string
	// OK is true when the unit came back or was left alone by policy.
	OK bool
	// Error says what went wrong (free text, cut to MaxErrorTextLen).
	Error string
}

// DigestPrefix returns the lower-case hex of the first DigestPrefixLen
// bytes of sum, for CredentialReport.SHA256Prefix.
func DigestPrefix(sum [sha256.Size]byte) string {
	return hex.EncodeToString(sum[:DigestPrefixLen])
}

// EncodeReport returns r's payload. It fails with ErrMalformed on an
// invalid outcome, name, agent version, digest prefix, delivery or
// verification, or more than MaxReportEntries credentials; free text is
// made valid instead (see Report.Summary).
func EncodeReport(r Report) ([]byte, error) {
	fail := func(field, reason string) ([]byte, error) {
		return nil, fmt.Errorf("encode report: %s: %s: %w", field, reason, ErrMalformed)
	}
	if r.Outcome != OutcomeReady && r.Outcome != OutcomeFailed {
		return fail("outcome", fmt.Sprintf("%d is neither ready nor failed", r.Outcome))
	}
	if reason := checkPrintable(r.AgentVersion, MaxVersionLen); reason != "" {
		return fail("agent version", reason)
	}
	if len(r.Credentials) > MaxReportEntries {
		return fail("credentials", fmt.Sprintf("%d, over the limit of %d", len(r.Credentials), MaxReportEntries))
	}
	digests := make([][]byte, len(r.Credentials))
	for i, c := range r.Credentials {
		if err := credential.ValidateName(c.Name); err != nil {
			return nil, fmt.Errorf("encode report: credential %d: %w: %w", i, err, ErrMalformed)
		}
		field := fmt.Sprintf("credential %q", c.Name)
		var reason string
		digests[i], reason = parseDigestPrefix(c.SHA256Prefix)
		if reason != "" {
			return fail(field+" digest prefix", reason)
		}
		if reason := checkToken(string(c.Delivery)); reason != "" {
			return fail(field+" delivery", reason)
		}
		if reason := checkToken(string(c.Verification)); reason != "" {
			return fail(field+" verification", reason)
		}
	}
	e := encoder{}
	e.u8(uint8(r.Outcome))
	e.str16(sanitizeText(r.Summary, MaxTextLen))
	e.str8(r.AgentVersion)
	e.u64(r.Generation)
	for _, d := range []time.Duration{r.Timings.Read, r.Timings.Verify, r.Timings.Fetch, r.Timings.Write, r.Timings.Total} {
		e.u32(millis(int64(d)))
	}
	e.u32(uint32(len(r.Credentials)))
	for i, c := range r.Credentials {
		e.str8(c.Name)
		e.u64(c.Size)
		e.u8(uint8(len(digests[i])))
		e.bytes(digests[i])
		e.str8(string(c.Delivery))
		e.str8(string(c.Verification))
		e.str16(sanitizeText(c.Error, MaxErrorTextLen))
	}
	if len(r.Units) > MaxReportUnits {
		return fail("units", fmt.Sprintf("%d, over the limit of %d", len(r.Units), MaxReportUnits))
	}
	e.u16(uint16(len(r.Units)))
	for i, u := range r.Units {
		if reason := checkPrintable(u.Unit, MaxUnitNameLen); reason != "" || u.Unit == "" {
			return fail(fmt.Sprintf("unit %d", i), cmpOr(reason, "empty"))
		}
		if reason := checkToken(u.Action); reason != "" {
			return fail(fmt.Sprintf("unit %q action", u.Unit), reason)
		}
		if len(u.Credentials) > MaxUnitCredentials {
			return fail(fmt.Sprintf("unit %q credentials", u.Unit), fmt.Sprintf("%d, over the limit of %d", len(u.Credentials), MaxUnitCredentials))
		}
		e.str8(u.Unit)
		e.str8(u.Action)
		e.u8(uint8(len(u.Credentials)))
		for _, c := range u.Credentials {
			if err := credential.ValidateName(c); err != nil {
				return nil, fmt.Errorf("encode report: unit %q: %w: %w", u.Unit, err, ErrMalformed)
			}
			e.str8(c)
		}
		e.str8(sanitizeText(u.Result, MaxResultLen))
		if u.OK {
			e.u8(1)
		} else {
			e.u8(0)
		}
		e.str16(sanitizeText(u.Error, MaxErrorTextLen))
	}
	if len(e.buf) > MaxReportSize {
		// Unreachable with the limits above; kept so a future field
		// cannot make a report the reader refuses.
		return nil, fmt.Errorf("encode report: %d bytes, over the %d-byte limit: %w", len(e.buf), MaxReportSize, ErrFrameTooLarge)
	}
	return e.buf, nil
}

func parseDigestPrefix(s string) ([]byte, string) {
	if len(s) > 2*sha256.Size || len(s)%2 != 0 {
		return nil, fmt.Sprintf("%d hex digits; want an even number up to %d", len(s), 2*sha256.Size)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return nil, fmt.Sprintf("byte %d is not a lower-case hex digit", i)
		}
	}
	b, _ := hex.DecodeString(s)
	return b, ""
}

// DecodeReport decodes a REPORT payload.
func DecodeReport(p []byte) (Report, error) {
	d := decoder{b: p, msg: "report"}
	var r Report
	r.Outcome = Outcome(d.u8("outcome"))
	if d.err == nil && r.Outcome != OutcomeReady && r.Outcome != OutcomeFailed {
		d.failf("outcome", "%d is neither ready nor failed", r.Outcome)
	}
	r.Summary = d.str16("summary", MaxTextLen)
	if reason := checkText(r.Summary, MaxTextLen); d.err == nil && reason != "" {
		d.failf("summary", "%s", reason)
	}
	r.AgentVersion = d.str8("agent version", MaxVersionLen)
	if reason := checkPrintable(r.AgentVersion, MaxVersionLen); d.err == nil && reason != "" {
		d.failf("agent version", "%s", reason)
	}
	r.Generation = d.u64("generation")
	for _, t := range []*time.Duration{&r.Timings.Read, &r.Timings.Verify, &r.Timings.Fetch, &r.Timings.Write, &r.Timings.Total} {
		*t = time.Duration(d.u32("timings")) * time.Millisecond
	}
	count := d.u32("count")
	if d.err == nil && count > MaxReportEntries {
		d.failf("count", "%d, over the limit of %d", count, MaxReportEntries)
	}
	// Each entry takes at least 15 bytes.
	if d.err == nil && uint64(count)*15 > uint64(len(p)-d.off) {
		d.failf("count", "%d credentials cannot fit in %d bytes", count, len(p)-d.off)
	}
	if d.err != nil {
		return Report{}, d.err
	}
	if count > 0 {
		r.Credentials = make([]CredentialReport, 0, count)
	}
	for i := 0; i < int(count) && d.err == nil; i++ {
		var c CredentialReport
		c.Name = d.str8(fmt.Sprintf("credential %d name", i), credential.MaxNameLen)
		if d.err != nil {
			break
		}
		if err := credential.ValidateName(c.Name); err != nil {
			d.err = fmt.Errorf("decode report: credential %d: %w: %w", i, err, ErrMalformed)
			break
		}
		field := fmt.Sprintf("credential %q", c.Name)
		c.Size = d.u64(field + " size")
		n := int(d.u8(field + " digest prefix length"))
		if d.err == nil && n > sha256.Size {
			d.failf(field+" digest prefix", "%d bytes, over %d", n, sha256.Size)
		}
		c.SHA256Prefix = hex.EncodeToString(d.take(field+" digest prefix", n))
		c.Delivery = Delivery(d.str8(field+" delivery", MaxTokenLen))
		if reason := checkToken(string(c.Delivery)); d.err == nil && reason != "" {
			d.failf(field+" delivery", "%s", reason)
		}
		c.Verification = Verification(d.str8(field+" verification", MaxTokenLen))
		if reason := checkToken(string(c.Verification)); d.err == nil && reason != "" {
			d.failf(field+" verification", "%s", reason)
		}
		c.Error = d.str16(field+" error", MaxErrorTextLen)
		if reason := checkText(c.Error, MaxErrorTextLen); d.err == nil && reason != "" {
			d.failf(field+" error", "%s", reason)
		}
		r.Credentials = append(r.Credentials, c)
	}
	r.Units = decodeUnits(&d)
	if err := d.end(); err != nil {
		return Report{}, err
	}
	return r, nil
}

// decodeUnits decodes the REPORT's units, after its credentials.
func decodeUnits(d *decoder) []UnitReport {
	n := int(d.u16("unit count"))
	if d.err == nil && n > MaxReportUnits {
		d.failf("unit count", "%d, over the limit of %d", n, MaxReportUnits)
	}
	// Each unit takes at least 7 bytes.
	if d.err != nil || n*7 > len(d.b)-d.off {
		if d.err == nil {
			d.failf("unit count", "%d units cannot fit in %d bytes", n, len(d.b)-d.off)
		}
		return nil
	}
	var units []UnitReport
	for i := 0; i < n && d.err == nil; i++ {
		var u UnitReport
		u.Unit = d.str8(fmt.Sprintf("unit %d", i), MaxUnitNameLen)
		if reason := checkPrintable(u.Unit, MaxUnitNameLen); d.err == nil && (reason != "" || u.Unit == "") {
			d.failf(fmt.Sprintf("unit %d", i), "%s", cmpOr(reason, "empty"))
		}
		field := fmt.Sprintf("unit %q", u.Unit)
		u.Action = d.str8(field+" action", MaxTokenLen)
		if reason := checkToken(u.Action); d.err == nil && reason != "" {
			d.failf(field+" action", "%s", reason)
		}
		k := int(d.u8(field + " credential count"))
		if d.err == nil && k > MaxUnitCredentials {
			d.failf(field+" credential count", "%d, over the limit of %d", k, MaxUnitCredentials)
		}
		for j := 0; j < k && d.err == nil; j++ {
			c := d.str8(field+" credential", credential.MaxNameLen)
			if err := credential.ValidateName(c); d.err == nil && err != nil {
				d.err = fmt.Errorf("decode report: %s: %w: %w", field, err, ErrMalformed)
			}
			u.Credentials = append(u.Credentials, c)
		}
		u.Result = d.str8(field+" result", MaxResultLen)
		if reason := checkText(u.Result, MaxResultLen); d.err == nil && reason != "" {
			d.failf(field+" result", "%s", reason)
		}
		switch ok := d.u8(field + " ok"); {
		case d.err != nil:
		case ok > 1:
			d.failf(field+" ok", "%d is neither 0 nor 1", ok)
		default:
			u.OK = ok == 1
		}
		u.Error = d.str16(field+" error", MaxErrorTextLen)
		if reason := checkText(u.Error, MaxErrorTextLen); d.err == nil && reason != "" {
			d.failf(field+" error", "%s", reason)
		}
		units = append(units, u)
	}
	return units
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// EncodeAck returns the ACK payload: status made valid and cut to
// MaxTextLen (see Report.Summary).
func EncodeAck(status string) []byte {
	return []byte(sanitizeText(status, MaxTextLen))
}

// DecodeAck decodes an ACK payload.
func DecodeAck(p []byte) (string, error) {
	if reason := checkText(string(p), MaxTextLen); reason != "" {
		return "", fmt.Errorf("decode ack: status: %s: %w", reason, ErrMalformed)
	}
	return string(p), nil
}

// WriteChallenge sends c (the agent's first frame).
func (c *Conn) WriteChallenge(ch Challenge) error {
	p, err := EncodeChallenge(ch)
	if err != nil {
		return err
	}
	return c.WriteFrame(TypeChallenge, p)
}

// ReadChallenge reads the agent's CHALLENGE, or, if the agent sent ERROR
// (it is busy with another session), an error wrapping a *RemoteError.
// See DecodeChallenge for ErrUnsupportedVersion.
func (c *Conn) ReadChallenge() (Challenge, error) {
	t, p, err := c.ReadFrame(TypeChallenge, TypeError)
	if err != nil {
		return Challenge{}, err
	}
	if t == TypeError {
		return Challenge{}, remote("read challenge", p)
	}
	return DecodeChallenge(p)
}

// WriteManifest sends the signed manifest envelope.
func (c *Conn) WriteManifest(envelope []byte) error {
	p, err := EncodeManifest(envelope)
	if err != nil {
		return err
	}
	return c.WriteFrame(TypeManifest, p)
}

// ReadManifest reads the host's MANIFEST, or, if the host sent ERROR, an
// error wrapping a *RemoteError.
func (c *Conn) ReadManifest() ([]byte, error) {
	t, p, err := c.ReadFrame(TypeManifest, TypeError)
	if err != nil {
		return nil, err
	}
	if t == TypeError {
		return nil, remote("read manifest", p)
	}
	return DecodeManifest(p)
}

// WriteCredentials sends creds (see EncodeCredentials for the rules). Values
// are written straight from their Secrets, not copied into one payload.
func (c *Conn) WriteCredentials(creds []Credential) error {
	n, err := checkCredentials(creds)
	if err != nil {
		return err
	}
	if err := checkOut(TypeCredentials, n); err != nil {
		return err
	}
	e := c.frame(TypeCredentials, n)
	encodeCredentials(e, creds)
	e.flush()
	if e.err != nil {
		return fmt.Errorf("write %s frame: %w", TypeCredentials, e.err)
	}
	return nil
}

// ReadCredentials reads the host's CREDENTIALS (after its MANIFEST), or,
// if the host sent ERROR, an error wrapping a *RemoteError.
func (c *Conn) ReadCredentials() ([]Credential, error) {
	t, p, err := c.ReadFrame(TypeCredentials, TypeError)
	if err != nil {
		return nil, err
	}
	if t == TypeError {
		return nil, remote("read credentials", p)
	}
	creds, err := DecodeCredentials(p)
	if err != nil {
		clear(p)
	}
	return creds, err
}

func remote(op string, p []byte) error {
	re, err := DecodeError(p)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w", op, re)
}

// WriteError sends ERROR. text must not contain a secret.
func (c *Conn) WriteError(code ErrorCode, text string) error {
	p, err := EncodeError(code, text)
	if err != nil {
		return err
	}
	return c.WriteFrame(TypeError, p)
}

// WriteReport sends r.
func (c *Conn) WriteReport(r Report) error {
	p, err := EncodeReport(r)
	if err != nil {
		return err
	}
	return c.WriteFrame(TypeReport, p)
}

// ReadReport reads the agent's REPORT, or, if the agent sent ERROR (the
// host's messages broke the protocol), an error wrapping a *RemoteError.
func (c *Conn) ReadReport() (Report, error) {
	t, p, err := c.ReadFrame(TypeReport, TypeError)
	if err != nil {
		return Report{}, err
	}
	if t == TypeError {
		return Report{}, remote("read report", p)
	}
	return DecodeReport(p)
}

// WriteAck sends ACK with a short status ("" is fine).
func (c *Conn) WriteAck(status string) error {
	return c.WriteFrame(TypeAck, EncodeAck(status))
}

// ReadAck reads the host's answer to REPORT: the ACK's status, or, if the
// host sent ERROR, an error wrapping a *RemoteError.
func (c *Conn) ReadAck() (string, error) {
	t, p, err := c.ReadFrame(TypeAck, TypeError)
	if err != nil {
		return "", err
	}
	if t == TypeError {
		return "", remote("read ack", p)
	}
	return DecodeAck(p)
}
