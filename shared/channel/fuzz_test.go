package channel

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Seeds shared by the fuzz targets: valid payloads and a few near misses.
func seedPayloads(t testing.TB) map[Type][][]byte {
	challenge := must(t)(EncodeChallenge(sampleChallenge()))
	creds := must(t)(EncodeCredentials(sampleCredentials()[:2]))
	report := must(t)(EncodeReport(sampleReport()))
	errp := must(t)(EncodeError(CodeUnavailable, "another session is active"))
	return map[Type][][]byte{
		TypeChallenge:   {challenge, challenge[:10], append(append([]byte{}, challenge...), 0)},
		TypeManifest:    {[]byte("VMCE\x02\x00VMCM"), {0}},
		TypeCredentials: {creds, must(t)(EncodeCredentials(nil)), {0, 0, 0, 1, 1, 'a', 0, 0, 0, 1, 'v'}},
		TypeReport:      {report, must(t)(EncodeReport(Report{Outcome: OutcomeReady}))},
		TypeError:       {errp},
		TypeAck:         {EncodeAck("recorded"), nil},
	}
}

// decodeAny decodes p as a t and re-encodes it; ok is false when p does not
// decode.
func decodeAny(t Type, p []byte) (again []byte, ok bool, err error) {
	switch t {
	case TypeChallenge:
		c, derr := DecodeChallenge(p)
		if derr != nil {
			return nil, false, nil
		}
		again, err = EncodeChallenge(c)
	case TypeManifest:
		m, derr := DecodeManifest(p)
		if derr != nil {
			return nil, false, nil
		}
		again, err = EncodeManifest(m)
	case TypeCredentials:
		c, derr := DecodeCredentials(p)
		if derr != nil {
			return nil, false, nil
		}
		again, err = EncodeCredentials(c)
	case TypeReport:
		r, derr := DecodeReport(p)
		if derr != nil {
			return nil, false, nil
		}
		again, err = EncodeReport(r)
	case TypeError:
		e, derr := DecodeError(p)
		if derr != nil {
			return nil, false, nil
		}
		again, err = EncodeError(e.Code, e.Text)
	case TypeAck:
		s, derr := DecodeAck(p)
		if derr != nil {
			return nil, false, nil
		}
		again = EncodeAck(s)
	}
	return again, true, err
}

// FuzzReadFrame feeds arbitrary streams to a reader: it must never panic,
// every error must be one of the package's or an EOF, and every frame it
// accepts must be written back byte for byte; a payload that decodes must
// re-encode to the same bytes.
func FuzzReadFrame(f *testing.F) {
	for typ, ps := range seedPayloads(f) {
		for _, p := range ps {
			f.Add(frameBytes(typ, p))
		}
	}
	f.Add([]byte{byte(TypeCredentials), 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{byte(TypeCredentials), 0x04, 0, 0, 0, 1, 2, 3})
	f.Add(append(frameBytes(TypeAck, nil), frameBytes(TypeError, []byte{0, 3, 0, 0})...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		c := NewHost(rw{r, failWriter{}})
		for i := 0; i < 16; i++ {
			start := len(b) - r.Len()
			typ, p, err := c.ReadFrame()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
					!errors.Is(err, ErrUnknownType) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("ReadFrame: unexpected error %v", err)
				}
				return
			}
			consumed := b[start : len(b)-r.Len()]
			if got := frameBytes(typ, p); !bytes.Equal(got, consumed) {
				t.Fatalf("frame %d re-encodes differently", i)
			}
			again, ok, err := decodeAny(typ, p)
			if err != nil {
				t.Fatalf("%s payload decoded but does not re-encode: %v", typ, err)
			}
			if ok && !bytes.Equal(again, p) {
				t.Fatalf("%s payload decoded but re-encodes differently", typ)
			}
		}
	})
}

func FuzzDecodeChallenge(f *testing.F) {
	for _, p := range seedPayloads(f)[TypeChallenge] {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChallenge(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("DecodeChallenge: unexpected error %v", err)
			}
			return
		}
		again, err := EncodeChallenge(c)
		if err != nil {
			t.Fatalf("decoded challenge does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("challenge re-encodes differently")
		}
		c2, err := DecodeChallenge(again)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(c, c2); diff != "" {
			t.Fatalf("second decode differs (-first +second):\n%s", diff)
		}
	})
}

func FuzzDecodeCredentials(f *testing.F) {
	for _, p := range seedPayloads(f)[TypeCredentials] {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		creds, err := DecodeCredentials(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeCredentials: unexpected error %v", err)
			}
			return
		}
		again, err := EncodeCredentials(creds)
		if err != nil {
			t.Fatalf("decoded credentials do not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("credentials re-encode differently")
		}
		// The streaming writer agrees with EncodeCredentials.
		var buf bytes.Buffer
		if err := NewHost(rw{nil, &buf}).WriteCredentials(creds); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), frameBytes(TypeCredentials, b)) {
			t.Fatalf("WriteCredentials and EncodeCredentials disagree")
		}
		creds2, err := DecodeCredentials(again)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(view(creds), view(creds2)); diff != "" {
			t.Fatalf("second decode differs (-first +second):\n%s", diff)
		}
	})
}

func FuzzDecodeReport(f *testing.F) {
	for _, p := range seedPayloads(f)[TypeReport] {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeReport(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeReport: unexpected error %v", err)
			}
			return
		}
		again, err := EncodeReport(r)
		if err != nil {
			t.Fatalf("decoded report does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("report re-encodes differently")
		}
		r2, err := DecodeReport(again)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(r, r2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("second decode differs (-first +second):\n%s", diff)
		}
	})
}
