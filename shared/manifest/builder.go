package manifest

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// Builder collects credentials into a Manifest, computing sizes and digests
// from the values and refusing bad entries as they are added. Start it with
// NewBuilder.
type Builder struct {
	m     Manifest
	names map[string]int
}

// NewBuilder starts a manifest for vm with a random per-boot nonce (the
// caller draws it from crypto/rand). issuedAt is cut to whole seconds.
func NewBuilder(vm string, nonce [NonceSize]byte, issuedAt time.Time) *Builder {
	return &Builder{
		m:     Manifest{VM: vm, Nonce: nonce, IssuedAt: wholeSeconds(issuedAt)},
		names: map[string]int{},
	}
}

// SetNotAfter sets the not-after time, cut to whole seconds; the zero time
// removes it.
func (b *Builder) SetNotAfter(t time.Time) {
	b.m.NotAfter = wholeSeconds(t)
}

// SetChannel sets the channel address and token. The token may be empty
// (see Manifest.Token); the Builder keeps it without copying.
func (b *Builder) SetChannel(addr string, token credential.Secret) {
	b.m.Channel, b.m.Token = addr, token
}

// Add adds a credential: a secret, or a static (non-secret) string. It
// refuses an invalid name, size or delivery, and a name added before;
// errors are *EntryError. The value itself is not kept.
func (b *Builder) Add(name string, value credential.Secret, d Delivery, static bool) error {
	i := len(b.m.Entries)
	e := NewEntry(name, value, d, static)
	if err := credential.ValidateName(name); err != nil {
		return &EntryError{Index: i, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	if j, dup := b.names[name]; dup {
		return &EntryError{Index: i, Name: name, Err: invalidf("duplicate name (also entry %d)", j)}
	}
	// The channel address may be set later; Manifest checks that part.
	if err := validateEntryFields(e, true); err != nil {
		return &EntryError{Index: i, Name: name, Err: err}
	}
	if b.names == nil {
		b.names = map[string]int{}
	}
	b.names[name] = i
	if len(b.m.Entries) == cap(b.m.Entries) {
		// Grow by hand so the old array's digests are cleared, not left
		// in a freed buffer (see Wipe).
		grown := make([]Entry, len(b.m.Entries), 2*cap(b.m.Entries)+4)
		copy(grown, b.m.Entries)
		wipeDigests(b.m.Entries)
		b.m.Entries = grown
	}
	b.m.Entries = append(b.m.Entries, e)
	return nil
}

// Manifest validates and returns the manifest built so far, entries sorted
// by name. It shares nothing with the Builder but the token.
func (b *Builder) Manifest() (*Manifest, error) {
	m := b.m
	m.Entries = sortedEntries(b.m.Entries)
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("build manifest: %w", err)
	}
	return &m, nil
}

// Envelope builds the manifest (as Manifest does), encodes it and wraps
// it: signed with key, or unsigned when key is nil. The encoding holds the
// channel token, if one was set, so the intermediate copy is cleared and
// the result must be treated as a secret.
func (b *Builder) Envelope(key ed25519.PrivateKey) ([]byte, error) {
	m, err := b.Manifest()
	if err != nil {
		return nil, err
	}
	defer wipeDigests(m.Entries)
	body, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	defer clear(body)
	if key == nil {
		return WrapUnsigned(body)
	}
	return Sign(body, key)
}

// Wipe clears the digests the Builder holds (a digest of a secret is
// secret). Call it once the manifest is built, in a process that keeps
// running afterwards; the Builder must not be used after.
func (b *Builder) Wipe() { wipeDigests(b.m.Entries) }

func wholeSeconds(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.Unix(t.Unix(), 0).UTC()
}
