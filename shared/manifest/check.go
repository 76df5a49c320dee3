package manifest

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// Check applies the guest's policy checks that need more than the bytes:
// the manifest must not be past its not-after time at now (an
// *ExpiredError), and, if vm is not empty, must have been issued for vm
// (ErrWrongVM). Early in boot the guest's clock may be wrong; Check trusts
// now as given and does not look at IssuedAt, which a slow clock would put
// in the future.
func (m *Manifest) Check(now time.Time, vm string) error {
	if vm != "" && m.VM != vm {
		return fmt.Errorf("%w: issued for vm %q, this is %q", ErrWrongVM, m.VM, vm)
	}
	if !m.NotAfter.IsZero() && now.After(m.NotAfter) {
		return &ExpiredError{NotAfter: m.NotAfter, Now: now}
	}
	return nil
}

// Lookup returns the entry named name.
func (m *Manifest) Lookup(name string) (Entry, bool) {
	for _, e := range m.Entries {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

// Matches checks value against the entry's size, then its SHA-256. A
// mismatch is a *MismatchError naming the credential and what differs,
// with sizes but never the value.
func (e Entry) Matches(value credential.Secret) error {
	got := uint64(value.Len())
	if got != e.Size {
		return &MismatchError{Name: e.Name, Field: "size", WantSize: e.Size, GotSize: got, WantSHA: e.SHA256}
	}
	return e.MatchesDigest(got, value.SHA256())
}

// MatchesDigest is Matches for a caller that already has the value's size
// and SHA-256 (computed while reading it, or needed for a report too), so
// a large value is not hashed twice.
func (e Entry) MatchesDigest(size uint64, sum [sha256.Size]byte) error {
	if size != e.Size {
		return &MismatchError{Name: e.Name, Field: "size", WantSize: e.Size, GotSize: size, WantSHA: e.SHA256}
	}
	if subtle.ConstantTimeCompare(sum[:], e.SHA256[:]) != 1 {
		return &MismatchError{Name: e.Name, Field: "sha256", WantSize: e.Size, GotSize: size, WantSHA: e.SHA256}
	}
	return nil
}
