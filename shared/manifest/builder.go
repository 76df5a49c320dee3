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

// NewBuilder starts a manifest for vm. issuedAt is cut to whole seconds.
func NewBuilder(vm string, issuedAt time.Time) *Builder {
	return &Builder{
		m:     Manifest{VM: vm, IssuedAt: wholeSeconds(issuedAt)},
		names: map[string]int{},
	}
}

// SetSession binds the manifest to one session: the agent's challenge and
// the generation it is signed as.
func (b *Builder) SetSession(challenge [ChallengeSize]byte, generation uint64) {
	b.m.Challenge, b.m.Generation = challenge, generation
}

// SetBudget sets how long the host waits for the session's report (see
// Manifest.Budget), cut down to whole milliseconds and to MaxBudget; 0
// removes it.
func (b *Builder) SetBudget(d time.Duration) {
	d = min(d, MaxBudget).Truncate(time.Millisecond)
	b.m.Budget = max(d, 0)
}

// SetNotAfter sets the not-after time, cut to whole seconds; the zero time
// removes it.
func (b *Builder) SetNotAfter(t time.Time) {
	b.m.NotAfter = wholeSeconds(t)
}

// Add adds a credential: a secret, or a static (non-secret) string. It
// refuses an invalid name, size or delivery, and a name added before;
// errors are *EntryError. The value itself is not kept.
func (b *Builder) Add(name string, value credential.Secret, d Delivery, static bool) error {
	return b.AddEntry(NewEntry(name, value, d, static))
}

// AddEntry adds an entry made by NewEntry (and given a Policy), with Add's
// checks.
func (b *Builder) AddEntry(e Entry) error {
	i := len(b.m.Entries)
	name := e.Name
	if err := credential.ValidateName(name); err != nil {
		return &EntryError{Index: i, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
	}
	if j, dup := b.names[name]; dup {
		return &EntryError{Index: i, Name: name, Err: invalidf("duplicate name (also entry %d)", j)}
	}
	if err := validateEntryFields(e); err != nil {
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
// by name. It shares nothing with the Builder.
func (b *Builder) Manifest() (*Manifest, error) {
	m := b.m
	m.Entries = sortedEntries(b.m.Entries)
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("build manifest: %w", err)
	}
	return &m, nil
}

// Envelope builds the manifest (as Manifest does), encodes it and wraps
// it: signed with key, or unsigned when key is nil. The encoding holds
// digests of the values, which are as secret as the values when a value
// is guessable: keep it where the values are.
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
