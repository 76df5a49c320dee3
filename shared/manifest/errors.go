package manifest

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Every error this package returns wraps one of them, so
// callers can branch with errors.Is; the typed errors below carry the details.
var (
	// ErrMalformed means the input is not a well-formed encoding: wrong magic,
	// truncated, trailing bytes, a length or value out of range, reserved
	// bits set.
	ErrMalformed = errors.New("malformed manifest")
	// ErrNotCanonical means the input is well-formed but is not the one
	// encoding MarshalBinary produces (a non-minimal varint, unsorted entries).
	ErrNotCanonical = errors.New("manifest encoding is not canonical")
	// ErrUnsupportedVersion means the input has a format version this code
	// does not know.
	ErrUnsupportedVersion = errors.New("unsupported manifest version")
	// ErrInvalid means a field breaks a rule (a bad name, a duplicate, a
	// missing time), whether found by MarshalBinary, Validate or Unmarshal.
	ErrInvalid = errors.New("invalid manifest")
	// ErrUnsigned means trusted keys were given but the envelope is unsigned.
	ErrUnsigned = errors.New("manifest is unsigned but trusted keys are configured")
	// ErrUnknownKey means the envelope is signed by a key that is not trusted.
	ErrUnknownKey = errors.New("manifest signed by an untrusted key")
	// ErrBadSignature means the signature does not verify.
	ErrBadSignature = errors.New("manifest signature does not verify")
	// ErrInvalidKey means a key, or a key file, is not usable.
	ErrInvalidKey = errors.New("invalid key")
	// ErrExpired means the manifest's not-after time has passed.
	ErrExpired = errors.New("manifest expired")
	// ErrWrongVM means the manifest was issued for another VM.
	ErrWrongVM = errors.New("manifest is for another vm")
	// ErrMismatch means a credential's value does not match its entry.
	ErrMismatch = errors.New("credential does not match the manifest")
)

// DecodeError says where in the input Unmarshal or ParseEnvelope stopped.
type DecodeError struct {
	What   string // "manifest" or "envelope"
	Offset int    // byte offset in the input where the problem starts
	Err    error  // wraps ErrMalformed, ErrNotCanonical, ErrInvalid, ...
}

// Error implements error.
func (e *DecodeError) Error() string {
	return fmt.Sprintf("decode %s at byte %d: %v", e.What, e.Offset, e.Err)
}

// Unwrap returns the cause.
func (e *DecodeError) Unwrap() error { return e.Err }

// VersionError reports a format version this code does not read.
type VersionError struct {
	What    string // "manifest" or "envelope"
	Version uint8  // the version found
}

// Error implements error.
func (e *VersionError) Error() string {
	return fmt.Sprintf("%s format version %d is not supported (this vmcred reads version %d only; upgrade the guest agent)", e.What, e.Version, Version)
}

// Unwrap makes errors.Is(err, ErrUnsupportedVersion) true.
func (e *VersionError) Unwrap() error { return ErrUnsupportedVersion }

// EntryError names the credential entry a problem is about. Name is empty
// when the name itself is the problem (Err then quotes it, shortened), and
// always in errors from Unmarshal, which quote nothing from their input
// (see the decoder's entry method): those give the index and an offset.
type EntryError struct {
	Index int // position in the manifest's (or caller's) entry list
	Name  string
	Err   error
}

// Error implements error.
func (e *EntryError) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("entry %d: %v", e.Index, e.Err)
	}
	return fmt.Sprintf("entry %d (credential %q): %v", e.Index, e.Name, e.Err)
}

// Unwrap returns the cause.
func (e *EntryError) Unwrap() error { return e.Err }

// KeyError names the signing key an Open failure is about.
type KeyError struct {
	KeyID string // as KeyID returns it
	Err   error  // ErrUnknownKey or ErrBadSignature
}

// Error implements error.
func (e *KeyError) Error() string {
	return fmt.Sprintf("ed25519 key %s: %v", e.KeyID, e.Err)
}

// Unwrap returns the cause.
func (e *KeyError) Unwrap() error { return e.Err }

// ExpiredError reports a manifest checked after its not-after time.
type ExpiredError struct {
	NotAfter time.Time
	Now      time.Time
}

// Error implements error.
func (e *ExpiredError) Error() string {
	return fmt.Sprintf("%v: not after %s, now %s", ErrExpired,
		e.NotAfter.UTC().Format(time.RFC3339), e.Now.UTC().Format(time.RFC3339))
}

// Unwrap makes errors.Is(err, ErrExpired) true.
func (e *ExpiredError) Unwrap() error { return ErrExpired }

// MismatchError reports a credential whose value does not match its entry.
// It carries sizes and the manifest's digest (which is public), never the
// value or the value's digest.
type MismatchError struct {
	Name     string
	Field    string // "size" or "sha256"
	WantSize uint64 // from the manifest
	GotSize  uint64 // of the value received
	WantSHA  [32]byte
}

// Error implements error.
func (e *MismatchError) Error() string {
	if e.Field == "size" {
		return fmt.Sprintf("credential %q: size is %d bytes, manifest says %d", e.Name, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("credential %q: sha256 differs from the manifest's %x… (size %d bytes matches)", e.Name, e.WantSHA[:4], e.GotSize)
}

// Unwrap makes errors.Is(err, ErrMismatch) true.
func (e *MismatchError) Unwrap() error { return ErrMismatch }

// invalidf is an ErrInvalid with a reason.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}
