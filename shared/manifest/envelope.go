package manifest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding"
	"encoding/hex"
	"fmt"
)

// Envelope constants; doc.go describes the layout.
const (
	envelopeMagic = "VMCE"
	algNone       = 0
	algEd25519    = 1

	// KeyIDSize is the length of a key ID in an envelope.
	KeyIDSize = 8
	// SignaturePrefix separates manifest signatures from anything else a
	// key might sign: the signed message is SignaturePrefix + body.
	SignaturePrefix = "vmcred manifest v2\x00"

	envelopeHeaderLen = 4 + 1 + 1
	signedHeaderLen   = envelopeHeaderLen + KeyIDSize + ed25519.SignatureSize
)

// Envelope is a body with an optional signature. Sign and WrapUnsigned build
// its encoding; ParseEnvelope reads it without checking the signature or
// decoding the body (Open does both).
type Envelope struct {
	Body  []byte
	KeyID [KeyIDSize]byte // zero when unsigned
	Sig   []byte          // nil when unsigned, else ed25519.SignatureSize bytes
}

// Signed reports whether the envelope carries a signature.
func (e *Envelope) Signed() bool { return e.Sig != nil }

// MarshalBinary returns the envelope's encoding.
func (e *Envelope) MarshalBinary() ([]byte, error) {
	if e.Sig != nil && len(e.Sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("encode envelope: %w: signature is %d bytes, want %d", ErrInvalid, len(e.Sig), ed25519.SignatureSize)
	}
	if e.Sig == nil && e.KeyID != [KeyIDSize]byte{} {
		return nil, fmt.Errorf("encode envelope: %w: key ID without a signature", ErrInvalid)
	}
	b := make([]byte, 0, signedHeaderLen+len(e.Body))
	b = append(b, envelopeMagic...)
	b = append(b, Version)
	if e.Sig == nil {
		b = append(b, algNone)
	} else {
		b = append(b, algEd25519)
		b = append(b, e.KeyID[:]...)
		b = append(b, e.Sig...)
	}
	return append(b, e.Body...), nil
}

// ParseEnvelope decodes an envelope's structure. It neither verifies the
// signature nor decodes the body; Body and Sig alias data.
func ParseEnvelope(data []byte) (*Envelope, error) {
	d := decoder{what: "envelope", data: data}
	e, err := d.envelope()
	if err != nil {
		return nil, &DecodeError{What: d.what, Offset: d.errOff, Err: err}
	}
	return e, nil
}

func (d *decoder) envelope() (*Envelope, error) {
	if err := d.magic(envelopeMagic, "magic"); err != nil {
		return nil, err
	}
	if err := d.version(); err != nil {
		return nil, err
	}
	alg, err := d.byte("algorithm")
	if err != nil {
		return nil, err
	}
	e := &Envelope{}
	switch alg {
	case algNone:
	case algEd25519:
		id, err := d.take(KeyIDSize, "key ID")
		if err != nil {
			return nil, err
		}
		copy(e.KeyID[:], id)
		if e.Sig, err = d.take(ed25519.SignatureSize, "signature"); err != nil {
			return nil, err
		}
	default:
		d.off--
		return nil, d.fail(fmt.Errorf("%w: unknown signature algorithm %d", ErrMalformed, alg))
	}
	e.Body = d.data[d.off:]
	return e, nil
}

// KeyID returns the ID of an Ed25519 public key as 16 hex digits: the first
// 8 bytes of SHA-256 of the key. Reports say "ed25519 key <KeyID>".
func KeyID(pub ed25519.PublicKey) string {
	id := keyID(pub)
	return hex.EncodeToString(id[:])
}

func keyID(pub ed25519.PublicKey) [KeyIDSize]byte {
	sum := sha256.Sum256(pub)
	return [KeyIDSize]byte(sum[:KeyIDSize])
}

// signedMessage is what the signature covers.
func signedMessage(body []byte) []byte {
	return append([]byte(SignaturePrefix), body...)
}

// Sign checks that body is a valid manifest encoding and returns it in an
// envelope signed with key.
func Sign(body []byte, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sign manifest: %w: private key is %d bytes, want %d", ErrInvalidKey, len(key), ed25519.PrivateKeySize)
	}
	// A private key whose public half does not belong to its seed would
	// sign with one key and name another; refuse it.
	pub := key.Public().(ed25519.PublicKey)
	if subtle.ConstantTimeCompare(ed25519.NewKeyFromSeed(key.Seed())[ed25519.SeedSize:], pub) != 1 {
		return nil, fmt.Errorf("sign manifest: %w: private key's public half does not match its seed", ErrInvalidKey)
	}
	m, err := Unmarshal(body)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	wipeDigests(m.Entries)
	msg := signedMessage(body)
	defer clear(msg)
	e := Envelope{Body: body, KeyID: keyID(pub), Sig: ed25519.Sign(key, msg)}
	return e.MarshalBinary()
}

// WrapUnsigned checks that body is a valid manifest encoding and returns it
// in an unsigned envelope, for guests without trusted keys.
func WrapUnsigned(body []byte) ([]byte, error) {
	m, err := Unmarshal(body)
	if err != nil {
		return nil, fmt.Errorf("wrap manifest: %w", err)
	}
	wipeDigests(m.Entries)
	e := Envelope{Body: body}
	return e.MarshalBinary()
}

// Verification says how far Open could vouch for a manifest.
type Verification struct {
	// KeyID is the signing key's ID (as KeyID returns it), or "" when the
	// envelope is unsigned.
	KeyID string
	// Trusted is true when the signature verified against a trusted key.
	// It is false for a signed envelope opened without trusted keys: the
	// signature was not checked.
	Trusted bool
}

// String describes the verification for reports.
func (v Verification) String() string {
	switch {
	case v.KeyID == "":
		return "unsigned (digests only)"
	case v.Trusted:
		return "signed by trusted ed25519 key " + v.KeyID
	default:
		return "signed by ed25519 key " + v.KeyID + ", not checked: no trusted keys (digests only)"
	}
}

// Open decodes an envelope and its manifest.
//
// With trusted keys, the envelope must be signed by one of them: an
// unsigned one gives ErrUnsigned, another key a *KeyError wrapping
// ErrUnknownKey, a signature that does not verify a *KeyError wrapping
// ErrBadSignature. The signature is checked before the body is decoded.
//
// Without trusted keys, any well-formed envelope is accepted and the
// manifest vouches only for digests; Verification says so.
//
// Open does not call Manifest.Check.
func Open(envelope []byte, trusted []ed25519.PublicKey) (*Manifest, Verification, error) {
	for i, k := range trusted {
		if len(k) != ed25519.PublicKeySize {
			return nil, Verification{}, fmt.Errorf("open manifest: %w: trusted key %d is %d bytes, want %d", ErrInvalidKey, i, len(k), ed25519.PublicKeySize)
		}
	}
	e, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, Verification{}, fmt.Errorf("open manifest: %w", err)
	}
	var v Verification
	switch {
	case !e.Signed() && len(trusted) > 0:
		return nil, Verification{}, fmt.Errorf("open manifest: %w", ErrUnsigned)
	case e.Signed():
		v.KeyID = hex.EncodeToString(e.KeyID[:])
		if len(trusted) > 0 {
			if err := verify(e, v.KeyID, trusted); err != nil {
				return nil, Verification{}, fmt.Errorf("open manifest: %w", err)
			}
			v.Trusted = true
		}
	}
	m, err := Unmarshal(e.Body)
	if err != nil {
		return nil, Verification{}, fmt.Errorf("open manifest: %w", err)
	}
	return m, v, nil
}

// verify checks e's signature against every trusted key with e's key ID
// (two keys could share an ID only by a 64-bit collision, but trying both
// costs nothing).
func verify(e *Envelope, id string, trusted []ed25519.PublicKey) error {
	msg := signedMessage(e.Body)
	known := false
	for _, k := range trusted {
		if keyID(k) != e.KeyID {
			continue
		}
		known = true
		if ed25519.Verify(k, msg, e.Sig) {
			return nil
		}
	}
	if !known {
		return &KeyError{KeyID: id, Err: ErrUnknownKey}
	}
	return &KeyError{KeyID: id, Err: ErrBadSignature}
}

// The encodings implement the standard interfaces.
var (
	_ encoding.BinaryMarshaler   = (*Envelope)(nil)
	_ encoding.BinaryMarshaler   = (*Manifest)(nil)
	_ encoding.BinaryUnmarshaler = (*Manifest)(nil)
	_ encoding.TextMarshaler     = Delivery(0)
	_ encoding.TextUnmarshaler   = (*Delivery)(nil)
)
