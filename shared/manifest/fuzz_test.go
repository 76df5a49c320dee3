package manifest

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
)

// fuzzSeeds are real encodings: the golden envelopes and their bodies.
func fuzzSeeds(f *testing.F) (envelopes, bodies [][]byte) {
	envelopes = [][]byte{goldenSigned, goldenUnsigned, goldenMinimal, mustSign(f, mustMarshal(f, manyEntries(f, 3)), testKey(2))}
	for _, env := range envelopes {
		e, err := ParseEnvelope(env)
		if err != nil {
			f.Fatal(err)
		}
		bodies = append(bodies, e.Body)
	}
	return envelopes, bodies
}

// FuzzUnmarshal: Unmarshal never panics, and whatever it accepts
// re-encodes to the identical bytes.
func FuzzUnmarshal(f *testing.F) {
	_, bodies := fuzzSeeds(f)
	for _, b := range bodies {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Unmarshal(data)
		if err != nil {
			if m != nil {
				t.Fatal("Unmarshal returned a manifest with an error")
			}
			if leaksToken(err.Error()) {
				t.Fatal("error leaks the token")
			}
			return
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted manifest does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted input re-encodes differently: %s", firstDiff(again, data))
		}
	})
}

// FuzzOpen: Open never panics; what it accepts re-encodes identically;
// with a trusted key it accepts only envelopes that key signed.
func FuzzOpen(f *testing.F) {
	envelopes, _ := fuzzSeeds(f)
	for _, e := range envelopes {
		f.Add(e, false)
		f.Add(e, true)
	}
	trusted := []ed25519.PublicKey{testPub(1)}
	f.Fuzz(func(t *testing.T, data []byte, withKey bool) {
		var keys []ed25519.PublicKey
		if withKey {
			keys = trusted
		}
		m, v, err := Open(data, keys)
		if err != nil {
			if leaksToken(err.Error()) {
				t.Fatal("error leaks the token")
			}
			if withKey && !errors.Is(err, ErrUnsigned) && !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrBadSignature) &&
				!errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedVersion) && !errors.Is(err, ErrNotCanonical) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		e, err := ParseEnvelope(data)
		if err != nil {
			t.Fatalf("Open accepted what ParseEnvelope refuses: %v", err)
		}
		if again, err := e.MarshalBinary(); err != nil || !bytes.Equal(again, data) {
			t.Fatalf("envelope re-encodes differently: %v", err)
		}
		body, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(body, e.Body) {
			t.Fatalf("body re-encodes differently: %v", err)
		}
		if withKey && (!v.Trusted || v.KeyID != KeyID(testPub(1)) || !ed25519.Verify(testPub(1), signedMessage(e.Body), e.Sig)) {
			t.Fatalf("accepted with a trusted key but verification is %v", v)
		}
		if !withKey && v.Trusted {
			t.Fatal("trusted without trusted keys")
		}
	})
}
