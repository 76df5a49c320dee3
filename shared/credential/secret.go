package credential

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
)

// Redacted is what every printed form of a Secret shows.
const Redacted = "<redacted>"

// Secret holds a credential's value. Every way of printing it — String,
// GoString, any fmt verb, JSON, text, and zap (which falls back to
// MarshalJSON or String) — shows Redacted. The bytes are reachable only
// through Reveal, so a leak needs an explicit call that review can find.
//
// The zero Secret is an empty value.
type Secret struct {
	b []byte
}

// NewSecret wraps b. The Secret takes ownership: the caller must not change
// b afterwards.
func NewSecret(b []byte) Secret { return Secret{b: b} }

// Reveal returns the value's bytes. The caller must not change them.
func (s Secret) Reveal() []byte { return s.b }

// Len is the value's length in bytes; lengths are not secret.
func (s Secret) Len() int { return len(s.b) }

// SHA256 is the digest of the value, which vmcred treats as public: manifests
// carry it so the guest can check what arrived.
func (s Secret) SHA256() [sha256.Size]byte { return SHA256(s.b) }

// Equal compares two values in constant time (for equal lengths).
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s.b, o.b) == 1 }

// Wipe overwrites the value with zeros. Go may have copied it elsewhere, so
// this narrows exposure rather than guaranteeing erasure.
func (s Secret) Wipe() { clear(s.b) }

// String implements fmt.Stringer.
func (Secret) String() string { return Redacted }

// GoString implements fmt.GoStringer, for %#v.
func (Secret) GoString() string { return Redacted }

// Format implements fmt.Formatter so that every verb, %x and %q included,
// prints Redacted instead of formatting the bytes.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }

// MarshalJSON implements json.Marshaler; zap.Any and zap.Reflect use it.
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (Secret) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
