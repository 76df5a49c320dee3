package manifest

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// Format constants.
const (
	// Version is the body and envelope format version this code writes and
	// the only one it reads. Version 2 replaced version 1's boot nonce,
	// channel address and channel token with a session challenge, a
	// generation and per-entry restart policies (DESIGN §8).
	Version = 2
	// ChallengeSize is the length of the agent's session challenge.
	ChallengeSize = 32
	// MaxEntries bounds the number of credentials in one manifest.
	MaxEntries = 4096
	// MaxEntrySize bounds one credential's size. It is above systemd's 1 MiB
	// (credential.MaxSize) because channel credentials do not go through
	// systemd's import; callers enforce delivery-specific limits.
	MaxEntrySize = 64 << 20
	// MaxVMNameLen bounds the VM name.
	MaxVMNameLen = 255
	// MaxUnix is the latest time a manifest can carry, 9999-12-31T23:59:59Z,
	// so every time round-trips through time.Time.
	MaxUnix = 253402300799
)

// Delivery says how a credential reaches the guest.
type Delivery uint8

// Deliveries. The zero Delivery is not valid, so a forgotten field is caught.
const (
	// DeliverySMBIOS is a type-11 OEM string.
	DeliverySMBIOS Delivery = 1
	// DeliveryFwCfg is a QEMU fw_cfg file under opt/io.systemd.credentials/.
	DeliveryFwCfg Delivery = 2
	// DeliveryChannel is fetched by the guest agent over the vsock channel.
	DeliveryChannel Delivery = 3
)

// Valid reports whether d is one of the Delivery constants.
func (d Delivery) Valid() bool { return d >= DeliverySMBIOS && d <= DeliveryChannel }

// String returns "smbios", "fwcfg" or "channel", or "delivery(N)" for an
// invalid value.
func (d Delivery) String() string {
	switch d {
	case DeliverySMBIOS:
		return "smbios"
	case DeliveryFwCfg:
		return "fwcfg"
	case DeliveryChannel:
		return "channel"
	}
	return fmt.Sprintf("delivery(%d)", uint8(d))
}

// MarshalText implements encoding.TextMarshaler (for JSON plans).
func (d Delivery) MarshalText() ([]byte, error) {
	if !d.Valid() {
		return nil, invalidf("%v", d)
	}
	return []byte(d.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Delivery) UnmarshalText(b []byte) error {
	v, err := ParseDelivery(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ParseDelivery is the inverse of String for valid deliveries.
func ParseDelivery(s string) (Delivery, error) {
	for d := DeliverySMBIOS; d <= DeliveryChannel; d++ {
		if s == d.String() {
			return d, nil
		}
	}
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return 0, invalidf("unknown delivery %q (want smbios, fwcfg or channel)", s)
}

// Policy says what the guest agent does with the services that use a
// credential after a session changed its value: restart them (the
// default), reload them, or nothing.
type Policy uint8

// Policies. The zero Policy is PolicyRestart: systemd copies a credential
// into a unit's own folder when the unit starts, so a restart is what
// delivers a new value.
const (
	PolicyRestart Policy = 0
	PolicyReload  Policy = 1
	PolicyNone    Policy = 2
)

// Valid reports whether p is one of the Policy constants.
func (p Policy) Valid() bool { return p <= PolicyNone }

// String returns "restart", "reload" or "none", or "policy(N)".
func (p Policy) String() string {
	switch p {
	case PolicyRestart:
		return "restart"
	case PolicyReload:
		return "reload"
	case PolicyNone:
		return "none"
	}
	return fmt.Sprintf("policy(%d)", uint8(p))
}

// ParsePolicy is the inverse of String for valid policies.
func ParsePolicy(s string) (Policy, error) {
	for p := PolicyRestart; p <= PolicyNone; p++ {
		if s == p.String() {
			return p, nil
		}
	}
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return 0, invalidf("unknown policy %q (want restart, reload or none)", s)
}

// MarshalText implements encoding.TextMarshaler (for JSON plans).
func (p Policy) MarshalText() ([]byte, error) {
	if !p.Valid() {
		return nil, invalidf("%v", p)
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Policy) UnmarshalText(b []byte) error {
	v, err := ParsePolicy(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Entry describes one credential.
type Entry struct {
	Name     string // valid per credential.ValidateName
	Size     uint64 // bytes, at most MaxEntrySize
	SHA256   [sha256.Size]byte
	Delivery Delivery
	// Static marks a non-secret string (`--static NAME=VALUE`). The zero
	// value, a secret, is the cautious default.
	Static bool
	// Policy is what the agent does with the credential's consumers when a
	// session changes its value.
	Policy Policy
}

// NewEntry describes value. It does not validate; Builder.Add and
// MarshalBinary do.
func NewEntry(name string, value credential.Secret, d Delivery, static bool) Entry {
	return Entry{Name: name, Size: uint64(value.Len()), SHA256: value.SHA256(), Delivery: d, Static: static}
}

// Manifest is what the host tells one VM about its credentials.
type Manifest struct {
	// VM is the name of the VM the manifest was issued for: 1 to 255 bytes
	// of printable ASCII without '/' or ':', not "." or ".." (the rules of
	// credential.ValidateName, so it is safe as a file name).
	VM string
	// Challenge is the agent's random challenge of the session the
	// manifest was signed for, or all zero for a manifest carried by
	// firmware (which only root in the guest reads, at boot). A session
	// manifest whose challenge is not the one the agent just sent is a
	// replay.
	Challenge [ChallengeSize]byte
	// Generation numbers the credential sets a host gave this VM; the
	// agent refuses a session with a generation below its own.
	Generation uint64
	// IssuedAt is when the host built the manifest, in whole seconds.
	IssuedAt time.Time
	// NotAfter, if not zero, is the last moment the manifest is valid, in
	// whole seconds, later than IssuedAt.
	NotAfter time.Time
	// Budget, if not zero, is how long the host waits for the session's
	// report from the moment it signed the manifest, in whole
	// milliseconds, at most MaxBudget: the agent bounds the write and the
	// restarts of consumers by it, so the host's --timeout covers the
	// whole session. Clocks need not agree: it is a duration.
	Budget time.Duration
	// Entries lists the credentials. MarshalBinary sorts a copy; Unmarshal
	// returns them sorted by name (bytewise).
	Entries []Entry
}

// Validate checks every rule MarshalBinary enforces except entry order:
// Entries may be in any order but names must be unique.
func (m *Manifest) Validate() error {
	if err := m.validateHeader(); err != nil {
		return err
	}
	if len(m.Entries) > MaxEntries {
		return invalidf("%d entries, over the limit of %d", len(m.Entries), MaxEntries)
	}
	for i, e := range m.Entries {
		if err := m.validateEntry(e); err != nil {
			return entryError(i, e.Name, err)
		}
	}
	idx := make([]int, len(m.Entries))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return strings.Compare(m.Entries[a].Name, m.Entries[b].Name) })
	for k := 1; k < len(idx); k++ {
		if m.Entries[idx[k]].Name == m.Entries[idx[k-1]].Name {
			return entryError(idx[k], m.Entries[idx[k]].Name, invalidf("duplicate name (also entry %d)", idx[k-1]))
		}
	}
	return nil
}

// entryError wraps err with the entry's index, and its name when the name
// is valid (an invalid one is already quoted, shortened, by err).
func entryError(i int, name string, err error) error {
	if credential.ValidateName(name) != nil {
		name = ""
	}
	return &EntryError{Index: i, Name: name, Err: err}
}

func (m *Manifest) validateHeader() error {
	if err := validateVMName(m.VM); err != nil {
		return err
	}
	if err := validateTime("issued-at", m.IssuedAt); err != nil {
		return err
	}
	if !m.NotAfter.IsZero() {
		if err := validateTime("not-after", m.NotAfter); err != nil {
			return err
		}
		if !m.NotAfter.After(m.IssuedAt) {
			return invalidf("not-after %d is not later than issued-at %d", m.NotAfter.Unix(), m.IssuedAt.Unix())
		}
	}
	if m.Budget < 0 || m.Budget > MaxBudget || m.Budget%time.Millisecond != 0 {
		return invalidf("session budget %s: want 0 or whole milliseconds up to %s", m.Budget, MaxBudget)
	}
	return nil
}

// MaxBudget bounds Manifest.Budget: a day.
const MaxBudget = 24 * time.Hour

// HasChallenge reports whether m was signed for a session (its challenge
// is not all zero).
func (m *Manifest) HasChallenge() bool { return m.Challenge != [ChallengeSize]byte{} }

func (m *Manifest) validateEntry(e Entry) error {
	if err := credential.ValidateName(e.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return validateEntryFields(e)
}

// validateEntryFields checks an entry's fields other than its name.
func validateEntryFields(e Entry) error {
	if e.Size > MaxEntrySize {
		return invalidf("size %d bytes, over the %d-byte limit", e.Size, MaxEntrySize)
	}
	if !e.Delivery.Valid() {
		return invalidf("%v is not a valid delivery", e.Delivery)
	}
	if !e.Policy.Valid() {
		return invalidf("%v is not a valid policy", e.Policy)
	}
	if e.Size == 0 && e.SHA256 != sha256.Sum256(nil) {
		return invalidf("size 0 but the digest is not that of empty data")
	}
	return nil
}

// validateVMName applies credential.ValidateName's rules with errors that
// say "vm name". Errors about fields the decoder read never quote them.
func validateVMName(s string) error {
	switch {
	case s == "":
		return invalidf("vm name is empty")
	case len(s) > MaxVMNameLen:
		return invalidf("vm name is %d bytes, over the %d-byte limit", len(s), MaxVMNameLen)
	case s == "." || s == "..":
		return invalidf("vm name is . or ..")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '/' || c == ':' {
			return invalidf("vm name: byte %d is not printable ASCII other than '/' and ':'", i)
		}
	}
	return nil
}

func validateTime(field string, t time.Time) error {
	switch {
	case t.IsZero():
		return invalidf("%s is not set", field)
	case t.Nanosecond() != 0:
		return invalidf("%s has a fraction of a second; the format holds whole seconds", field)
	case t.Unix() < 1 || t.Unix() > MaxUnix:
		return invalidf("%s %d is outside 1 to %d", field, t.Unix(), MaxUnix)
	}
	return nil
}
