package oemstring

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// decodeBase64Reference is DecodeBase64 without its fast path: every input
// goes through the clean-up.
func decodeBase64Reference(s string) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r':
			return -1
		case '-':
			return '+'
		case '_':
			return '/'
		}
		return r
	}, s)
	b, err := base64.StdEncoding.Strict().DecodeString(clean)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("corrupt base64 at offset %d of %d", int64(ce), len(clean))
		}
		return nil, errors.New("corrupt base64")
	}
	return b, nil
}

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
