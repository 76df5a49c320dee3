package oemstring

import (
	"bytes"
	"testing"
)

// decodeBase64Reference is DecodeBase64 without its fast path: every input
// goes through the clean-up.
func decodeBase64Reference(s string) ([]byte, error) { return decodeCleaned(s) }

// FuzzDecodeBase64Fast: the fast path for plain base64 gives the same
// bytes and the same error text as the clean-up path.
func FuzzDecodeBase64Fast(f *testing.F) {
	for _, s := range []string{"", "=", "AA==", "AAA=", "AAAA", "AB==", "AAA", "A===", "AAAA====", "aGVsbG8=", "aGVs bG8=", "aGVsbG8", "-_-_", "+/+/", "é", "AA==AA==", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := DecodeBase64(s)
		want, werr := decodeBase64Reference(s)
		if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() {
			t.Fatalf("DecodeBase64(%q) error %v, reference %v", s, err, werr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("DecodeBase64(%q) = %x, reference %x", s, got, want)
		}
	})
}
