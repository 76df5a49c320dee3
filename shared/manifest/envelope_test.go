package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKeyID(t *testing.T) {
	pub := testPub(1)
	sum := sha256.Sum256(pub)
	if got, want := KeyID(pub), hex.EncodeToString(sum[:8]); got != want {
		t.Errorf("KeyID = %s, want %s", got, want)
	}
	if len(KeyID(pub)) != 16 || KeyID(pub) == KeyID(testPub(2)) {
		t.Errorf("KeyID %q: want 16 hex digits, distinct per key", KeyID(pub))
	}
}

func TestOpen(t *testing.T) {
	body := mustMarshal(t, fixture(t))
	signed := mustSign(t, body, testKey(1))
	unsigned, err := WrapUnsigned(body)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x01
		return b
	}
	// A signature over the body alone, without the domain prefix.
	noPrefix := bytes.Clone(signed)
	copy(noPrefix[signedHeaderLen-ed25519.SignatureSize:], ed25519.Sign(testKey(1), body))
	// Version 2 of the envelope.
	v2 := flip(signed, 4)
	v2[4] = 3

	trusted := []ed25519.PublicKey{testPub(1)}
	for _, tc := range []struct {
		name    string
		env     []byte
		trusted []ed25519.PublicKey
		want    Verification
		wantErr error
		keyID   string // KeyError.KeyID expected
	}{
		{"signed, trusted", signed, trusted, Verification{KeyID: KeyID(testPub(1)), Trusted: true}, nil, ""},
		{"signed, trusted second of three", signed, []ed25519.PublicKey{testPub(2), testPub(1), testPub(3)}, Verification{KeyID: KeyID(testPub(1)), Trusted: true}, nil, ""},
		{"signed, no trusted keys", signed, nil, Verification{KeyID: KeyID(testPub(1))}, nil, ""},
		{"unsigned, no trusted keys", unsigned, nil, Verification{}, nil, ""},
		{"unsigned, trusted keys", unsigned, trusted, Verification{}, ErrUnsigned, ""},
		{"signed by another key", mustSign(t, body, testKey(2)), trusted, Verification{}, ErrUnknownKey, KeyID(testPub(2))},
		{"key ID flipped", flip(signed, 6), trusted, Verification{}, ErrUnknownKey, "e49b87eff1b265bf"},
		{"signature flipped", flip(signed, 20), trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"signature last byte flipped", flip(signed, signedHeaderLen-1), trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"body flipped (challenge)", flip(signed, signedHeaderLen+20), trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"body flipped (a digest)", flip(signed, len(signed)-10), trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"body truncated", signed[:len(signed)-1], trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"byte appended", append(bytes.Clone(signed), 0), trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"signature without domain prefix", noPrefix, trusted, Verification{}, ErrBadSignature, KeyID(testPub(1))},
		{"envelope version 3", v2, trusted, Verification{}, ErrUnsupportedVersion, ""},
		{"unknown algorithm", func() []byte { b := bytes.Clone(signed); b[5] = 2; return b }(), nil, Verification{}, ErrMalformed, ""},
		{"bad envelope magic", body, nil, Verification{}, ErrMalformed, ""},
		{"unsigned, bad body", func() []byte { b := bytes.Clone(unsigned); b[len(b)-1] = 0x40; return b }(), nil, Verification{}, ErrMalformed, ""},
		{"signed untrusted, trailing byte", append(bytes.Clone(signed), 0), nil, Verification{}, ErrMalformed, ""},
		{"short trusted key", signed, []ed25519.PublicKey{testPub(1)[:31]}, Verification{}, ErrInvalidKey, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, v, err := Open(tc.env, tc.trusted)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open error = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if m != nil || v != (Verification{}) {
					t.Errorf("Open returned %v, %v with an error", m, v)
				}
				if leaksToken(err.Error()) {
					t.Errorf("error leaks the token")
				}
				var ke *KeyError
				if tc.keyID != "" {
					if !errors.As(err, &ke) || ke.KeyID != tc.keyID {
						t.Errorf("error %v: want a KeyError for key %s", err, tc.keyID)
					}
					if !strings.Contains(err.Error(), "ed25519 key "+tc.keyID) {
						t.Errorf("error %q does not name key %s", err, tc.keyID)
					}
				} else if errors.As(err, &ke) {
					t.Errorf("error %v is a KeyError", err)
				}
				return
			}
			if diff := cmp.Diff(tc.want, v); diff != "" {
				t.Errorf("Verification (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(fixture(t), m, cmpOpts); diff != "" {
				t.Errorf("manifest (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVerificationString(t *testing.T) {
	id := KeyID(testPub(1))
	for _, tc := range []struct {
		v    Verification
		want string
	}{
		{Verification{}, "unsigned (digests only)"},
		{Verification{KeyID: id, Trusted: true}, "signed by trusted ed25519 key " + id},
		{Verification{KeyID: id}, "signed by ed25519 key " + id + ", not checked: no trusted keys (digests only)"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.v.String()); diff != "" {
				t.Errorf("String (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSignedBitFlips: with a trusted key, no single-bit change to a signed
// envelope is accepted.
func TestSignedBitFlips(t *testing.T) {
	env := mustSign(t, mustMarshal(t, fixture(t)), testKey(1))
	trusted := []ed25519.PublicKey{testPub(1)}
	for i := range len(env) * 8 {
		b := bytes.Clone(env)
		b[i/8] ^= 1 << (i % 8)
		if _, _, err := Open(b, trusted); err == nil {
			t.Fatalf("Open accepted the envelope with bit %d flipped", i)
		} else if leaksToken(err.Error()) {
			t.Fatalf("bit %d: error leaks the token", i)
		}
	}
}

func TestOpenTruncated(t *testing.T) {
	body := mustMarshal(t, fixture(t))
	unsigned, _ := WrapUnsigned(body)
	for name, env := range map[string][]byte{"signed": mustSign(t, body, testKey(1)), "unsigned": unsigned} {
		t.Run(name, func(t *testing.T) {
			for n := range len(env) {
				for _, trusted := range [][]ed25519.PublicKey{nil, {testPub(1)}} {
					if _, _, err := Open(env[:n], trusted); err == nil {
						t.Fatalf("Open accepted the first %d of %d bytes", n, len(env))
					}
				}
				if n < envelopeHeaderLen || (name == "signed" && n < signedHeaderLen) {
					if _, err := ParseEnvelope(env[:n]); !errors.Is(err, ErrMalformed) {
						t.Fatalf("ParseEnvelope(first %d bytes) = %v, want ErrMalformed", n, err)
					}
				}
			}
		})
	}
}

func TestSignRejects(t *testing.T) {
	body := mustMarshal(t, fixture(t))
	mismatched := bytes.Clone(testKey(1))
	copy(mismatched[32:], testPub(2))
	for _, tc := range []struct {
		name string
		body []byte
		key  ed25519.PrivateKey
		want error
	}{
		{"short key", body, testKey(1)[:63], ErrInvalidKey},
		{"nil key", body, nil, ErrInvalidKey},
		{"public half not from seed", body, mismatched, ErrInvalidKey},
		{"not a manifest", []byte("hello"), testKey(1), ErrMalformed},
		{"trailing byte", append(bytes.Clone(body), 0), testKey(1), ErrMalformed},
		{"an envelope", mustSign(t, body, testKey(1)), testKey(1), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Sign(tc.body, tc.key); !errors.Is(err, tc.want) {
				t.Errorf("Sign error = %v, want %v", err, tc.want)
			} else if leaksToken(err.Error()) {
				t.Errorf("error leaks the token")
			}
			if tc.want == ErrMalformed {
				if _, err := WrapUnsigned(tc.body); !errors.Is(err, tc.want) {
					t.Errorf("WrapUnsigned error = %v, want %v", err, tc.want)
				}
			}
		})
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	body := mustMarshal(t, fixture(t))
	unsigned, _ := WrapUnsigned(body)
	for name, env := range map[string][]byte{"signed": mustSign(t, body, testKey(1)), "unsigned": unsigned} {
		t.Run(name, func(t *testing.T) {
			e, err := ParseEnvelope(env)
			if err != nil {
				t.Fatal(err)
			}
			if e.Signed() != (name == "signed") || !bytes.Equal(e.Body, body) {
				t.Errorf("ParseEnvelope: signed=%v, body %s", e.Signed(), firstDiff(e.Body, body))
			}
			again, err := e.MarshalBinary()
			if err != nil || !bytes.Equal(again, env) {
				t.Errorf("MarshalBinary = %v, %s", err, firstDiff(again, env))
			}
		})
	}
	if _, err := (&Envelope{Body: body, Sig: make([]byte, 63)}).MarshalBinary(); !errors.Is(err, ErrInvalid) {
		t.Errorf("63-byte signature: error = %v", err)
	}
	if _, err := (&Envelope{Body: body, KeyID: [8]byte{1}}).MarshalBinary(); !errors.Is(err, ErrInvalid) {
		t.Errorf("key ID without signature: error = %v", err)
	}
}
