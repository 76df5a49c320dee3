package channel

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vmcred/vmcred/shared/credential"
)

func TestReadMagic(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"ok", Magic, nil},
		{"ok with more", Magic + "\x01", nil},
		{"wrong", "VMCRED/2\n\x00", ErrBadMagic},
		{"version 1", "\x00VMCRED/1\n", ErrBadMagic},
		{"notify", "READY=1\nSTATUS=Ready.", ErrBadMagic},
		{"short", Magic[:3], io.ErrUnexpectedEOF},
		{"empty", "", io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ReadMagic(strings.NewReader(tt.in))
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("ReadMagic = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestAgentWritesMagicOnce(t *testing.T) {
	var buf bytes.Buffer
	c := NewAgent(rw{nil, &buf})
	if err := c.WriteChallenge(sampleChallenge()); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteReport(sampleReport()); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if !bytes.HasPrefix(b, []byte(Magic)) || bytes.Count(b, []byte(Magic)) != 1 {
		t.Fatalf("agent stream does not start with exactly one Magic")
	}
	s := NewHost(reader(b[len(Magic):]))
	if _, err := s.ReadChallenge(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadReport(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ReadFrame(); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadFrame at the end = %v, want io.EOF", err)
	}
}

func TestFrameLimits(t *testing.T) {
	tests := []struct {
		name   string
		header []byte
		want   []Type
		err    error
		msg    string
	}{
		{"4 GiB credentials", []byte{byte(TypeCredentials), 0xff, 0xff, 0xff, 0xff}, nil, ErrFrameTooLarge, "length 4294967295, over the 67108864-byte limit"},
		{"credentials one over", []byte{byte(TypeCredentials), 0x04, 0x00, 0x00, 0x01}, nil, ErrFrameTooLarge, "over the"},
		{"challenge of 1 MiB", []byte{byte(TypeChallenge), 0x00, 0x10, 0x00, 0x00}, nil, ErrFrameTooLarge, "read challenge frame"},
		{"challenge one over", []byte{byte(TypeChallenge), 0x00, 0x00, 0x10, 0x01}, nil, ErrFrameTooLarge, "4097"},
		{"manifest of 4 GiB", []byte{byte(TypeManifest), 0xff, 0xff, 0xff, 0xff}, nil, ErrFrameTooLarge, "over the 2097152-byte limit"},
		{"ack of 4 GiB", []byte{byte(TypeAck), 0xff, 0xff, 0xff, 0xff}, nil, ErrFrameTooLarge, "ack"},
		{"report of 4 GiB", []byte{byte(TypeReport), 0xff, 0xff, 0xff, 0xff}, nil, ErrFrameTooLarge, "report"},
		{"error of 4 GiB", []byte{byte(TypeError), 0xff, 0xff, 0xff, 0xff}, nil, ErrFrameTooLarge, "error"},
		{"type 0", []byte{0, 0, 0, 0, 0}, nil, ErrUnknownType, "type 0x00"},
		{"type 7", []byte{7, 0, 0, 0, 0}, nil, ErrUnknownType, "type 0x07"},
		{"type 0xff", []byte{0xff, 0xff, 0xff, 0xff, 0xff}, nil, ErrUnknownType, "type 0xff"},
		{"credentials where the challenge is due", []byte{byte(TypeCredentials), 0xff, 0xff, 0xff, 0xff}, []Type{TypeChallenge}, ErrUnexpectedType, "got credentials, want challenge"},
		{"report where ack is due", []byte{byte(TypeReport), 0, 0, 0, 0}, []Type{TypeAck, TypeError}, ErrUnexpectedType, "got report, want ack or error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewHost(reader(tt.header))
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			_, p, err := c.ReadFrame(tt.want...)
			runtime.ReadMemStats(&ms1)
			if !errors.Is(err, tt.err) {
				t.Fatalf("ReadFrame error = %v, want %v", err, tt.err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
			if p != nil {
				t.Errorf("ReadFrame returned a payload with its error")
			}
			if got := ms1.TotalAlloc - ms0.TotalAlloc; got > 1<<20 {
				t.Errorf("refusing the frame allocated %d bytes", got)
			}
		})
	}
}

// TestLargeClaimSmallAllocation: a frame that claims the full 64 MiB but
// carries a few bytes costs memory in step with those bytes.
func TestLargeClaimSmallAllocation(t *testing.T) {
	in := append([]byte{byte(TypeCredentials), 0x04, 0x00, 0x00, 0x00}, "only a few bytes"...)
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	_, _, err := NewHost(reader(in)).ReadFrame()
	runtime.ReadMemStats(&ms1)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadFrame error = %v, want io.ErrUnexpectedEOF", err)
	}
	if got := ms1.TotalAlloc - ms0.TotalAlloc; got > 1<<20 {
		t.Errorf("a 64 MiB claim with 16 bytes allocated %d bytes", got)
	}
}

func TestWriteFrameLimits(t *testing.T) {
	var buf bytes.Buffer
	c := NewHost(rw{nil, &buf})
	if err := c.WriteFrame(TypeChallenge, make([]byte, MaxChallengeSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("WriteFrame(oversized challenge) = %v, want ErrFrameTooLarge", err)
	}
	if err := c.WriteFrame(Type(9), nil); !errors.Is(err, ErrUnknownType) {
		t.Errorf("WriteFrame(type 9) = %v, want ErrUnknownType", err)
	}
	if buf.Len() != 0 {
		t.Errorf("refused frames wrote %d bytes", buf.Len())
	}
	if err := c.WriteFrame(TypeChallenge, make([]byte, MaxChallengeSize)); err != nil {
		t.Errorf("WriteFrame(challenge at the limit) = %v", err)
	}
	boom := errors.New("boom")
	if err := NewHost(rw{nil, errWriter{boom}}).WriteFrame(TypeAck, nil); !errors.Is(err, boom) {
		t.Errorf("WriteFrame to a failing writer = %v, want it to wrap the cause", err)
	}
	if err := NewHost(rw{nil, errWriter{boom}}).WriteCredentials(sampleCredentials()); !errors.Is(err, boom) {
		t.Errorf("WriteCredentials to a failing writer = %v, want it to wrap the cause", err)
	}
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

func TestTypeStrings(t *testing.T) {
	got := []string{TypeChallenge.String(), TypeCredentials.String(), TypeError.String(), TypeReport.String(), TypeAck.String(), TypeManifest.String(), Type(0).String(), Type(200).String()}
	want := []string{"challenge", "credentials", "error", "report", "ack", "manifest", "type 0x00", "type 0xc8"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Type.String (-want +got):\n%s", diff)
	}
	if Type(0).Limit() != 0 || TypeCredentials.Limit() != MaxFrame {
		t.Errorf("Limit: unknown %d, credentials %d", Type(0).Limit(), TypeCredentials.Limit())
	}
}

func TestChallengeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   Challenge
		want Challenge
	}{
		{"full", sampleChallenge(), sampleChallenge()},
		{"zero version means current", func() Challenge { c := sampleChallenge(); c.Version = 0; return c }(), sampleChallenge()},
		{"empty strings", Challenge{Nonce: [ChallengeSize]byte{9}}, Challenge{Version: ProtocolVersion, Nonce: [ChallengeSize]byte{9}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := must(t)(EncodeChallenge(tt.in))
			got, err := DecodeChallenge(p)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("DecodeChallenge(EncodeChallenge()) (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeChallengeErrors(t *testing.T) {
	good := must(t)(EncodeChallenge(sampleChallenge()))
	with := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good...)) }
	const bootIDAt = 2 + ChallengeSize + 8
	tests := []struct {
		name string
		in   []byte
		err  error
		msg  string
	}{
		{"empty", nil, ErrMalformed, "version"},
		{"version 1", with(func(b []byte) []byte { b[1] = 1; return b }), ErrUnsupportedVersion, "version 1, want 2"},
		{"version 0", with(func(b []byte) []byte { b[1] = 0; return b }), ErrUnsupportedVersion, "version 0"},
		{"short nonce", good[:2+ChallengeSize-1], ErrMalformed, "nonce"},
		{"zero nonce", with(func(b []byte) []byte { clear(b[2 : 2+ChallengeSize]); return b }), ErrMalformed, "nonce: all zero"},
		{"short generation", good[:2+ChallengeSize+3], ErrMalformed, "generation"},
		{"trailing byte", append(append([]byte{}, good...), 'x'), ErrMalformed, "1 trailing bytes"},
		{"boot ID length past end", with(func(b []byte) []byte { b[bootIDAt] = 200; return b }), ErrMalformed, "boot ID"},
		{"boot ID over limit", with(func(b []byte) []byte {
			b = b[:bootIDAt]
			b = append(b, 65)
			b = append(b, bytes.Repeat([]byte{'a'}, 65)...)
			return append(b, 0)
		}), ErrMalformed, "65 bytes, over the 64-byte limit"},
		{"boot ID with newline", with(func(b []byte) []byte { b[bootIDAt+1] = '\n'; return b }), ErrMalformed, "not printable ASCII"},
		{"agent version not printable", with(func(b []byte) []byte { b[len(b)-1] = 0xff; return b }), ErrMalformed, "agent version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeChallenge(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("DecodeChallenge error = %v, want %v", err, tt.err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
		})
	}
	c, err := DecodeChallenge(with(func(b []byte) []byte { b[0], b[1] = 0x12, 0x34; return b }))
	if !errors.Is(err, ErrUnsupportedVersion) || c.Version != 0x1234 {
		t.Errorf("DecodeChallenge(version 0x1234) = version %#x, %v; want the version reported", c.Version, err)
	}
}

func TestManifestFrame(t *testing.T) {
	if _, err := EncodeManifest(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("EncodeManifest(nil) = %v, want ErrMalformed", err)
	}
	if _, err := EncodeManifest(make([]byte, MaxManifestSize+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("EncodeManifest(too large) = %v, want ErrFrameTooLarge", err)
	}
	if _, err := DecodeManifest(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("DecodeManifest(nil) = %v, want ErrMalformed", err)
	}
	var b bytes.Buffer
	if err := NewHost(rw{nil, &b}).WriteManifest([]byte("VMCE...")); err != nil {
		t.Fatal(err)
	}
	got, err := NewAgent(reader(b.Bytes())).ReadManifest()
	if err != nil || string(got) != "VMCE..." {
		t.Errorf("ReadManifest = %q, %v", got, err)
	}
	// A manifest frame whose length is over the limit is refused before
	// its payload is read.
	hdr := []byte{byte(TypeManifest), 0, 0x20, 0, 1}
	if _, err := NewAgent(reader(hdr)).ReadManifest(); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("ReadManifest(2 MiB + 1) = %v, want ErrFrameTooLarge", err)
	}
}

func TestEncodeErrors(t *testing.T) {
	challenge := func(f func(c *Challenge)) Challenge { c := sampleChallenge(); f(&c); return c }
	report := func(f func(r *Report)) Report { r := sampleReport(); f(&r); return r }
	entry := func(f func(c *CredentialReport)) Report {
		return report(func(r *Report) { f(&r.Credentials[0]) })
	}
	many := make([]Credential, MaxCredentials+1)
	for i := range many {
		many[i] = Credential{Name: fmt.Sprintf("c%d", i)}
	}
	big := credential.NewSecret(make([]byte, MaxFrame/2+1))
	manyEntries := make([]CredentialReport, MaxReportEntries+1)
	for i := range manyEntries {
		manyEntries[i] = CredentialReport{Name: "n"}
	}
	tests := []struct {
		name string
		err  error
		msg  string
		f    func() error
	}{
		{"zero challenge", ErrMalformed, "nonce is all zero", func() error {
			_, err := EncodeChallenge(challenge(func(c *Challenge) { c.Nonce = [ChallengeSize]byte{} }))
			return err
		}},
		{"boot ID with newline", ErrMalformed, "boot ID: byte 36 is 0x0a", func() error {
			_, err := EncodeChallenge(challenge(func(c *Challenge) { c.BootID += "\n" }))
			return err
		}},
		{"agent version too long", ErrMalformed, "agent version: 129 bytes", func() error {
			_, err := EncodeChallenge(challenge(func(c *Challenge) { c.AgentVersion = strings.Repeat("v", 129) }))
			return err
		}},
		{"invalid name", credential.ErrInvalidName, `credential 1: credential name "a/b"`, func() error {
			_, err := EncodeCredentials([]Credential{{Name: "ok"}, {Name: "a/b"}})
			return err
		}},
		{"duplicate name", ErrMalformed, `credential 1 "dup": name given twice`, func() error {
			_, err := EncodeCredentials([]Credential{{Name: "dup"}, {Name: "dup"}})
			return err
		}},
		{"too many credentials", ErrMalformed, "4097 credentials, over the limit of 4096", func() error {
			_, err := EncodeCredentials(many)
			return err
		}},
		{"credentials over 64 MiB", ErrFrameTooLarge, `at credential "b"`, func() error {
			return NewHost(rw{nil, io.Discard}).WriteCredentials([]Credential{{Name: "a", Value: big}, {Name: "b", Value: big}})
		}},
		{"outcome 0", ErrMalformed, "outcome: 0 is neither", func() error {
			_, err := EncodeReport(report(func(r *Report) { r.Outcome = 0 }))
			return err
		}},
		{"report agent version", ErrMalformed, "agent version", func() error {
			_, err := EncodeReport(report(func(r *Report) { r.AgentVersion = "v1\n" }))
			return err
		}},
		{"report name", credential.ErrInvalidName, "credential 0", func() error {
			_, err := EncodeReport(entry(func(c *CredentialReport) { c.Name = ".." }))
			return err
		}},
		{"upper-case digest", ErrMalformed, "not a lower-case hex digit", func() error {
			_, err := EncodeReport(entry(func(c *CredentialReport) { c.SHA256Prefix = "ABCD" }))
			return err
		}},
		{"odd digest", ErrMalformed, "3 hex digits", func() error {
			_, err := EncodeReport(entry(func(c *CredentialReport) { c.SHA256Prefix = "abc" }))
			return err
		}},
		{"digest too long", ErrMalformed, "66 hex digits", func() error {
			_, err := EncodeReport(entry(func(c *CredentialReport) { c.SHA256Prefix = strings.Repeat("a", 66) }))
			return err
		}},
		{"delivery", ErrMalformed, "delivery: byte 0 is 0x53", func() error {
			_, err := EncodeReport(entry(func(c *CredentialReport) { c.Delivery = "SMBIOS" }))
			return err
		}},
		{"verification", ErrMalformed, "verification: 33 bytes", func() error {
			_, err := EncodeReport(entry(func(c *CredentialReport) { c.Verification = Verification(strings.Repeat("v", 33)) }))
			return err
		}},
		{"too many entries", ErrMalformed, "4097, over the limit of 4096", func() error {
			_, err := EncodeReport(report(func(r *Report) { r.Credentials = manyEntries }))
			return err
		}},
		{"error code 0", ErrMalformed, "code 0", func() error {
			_, err := EncodeError(0, "x")
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f()
			if !errors.Is(err, tt.err) {
				t.Fatalf("error = %v, want %v", err, tt.err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
			noCanary(t, "error", err.Error())
		})
	}
}

func TestCredentialsRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		creds []Credential
	}{
		{"none", []Credential{}},
		{"sample", sampleCredentials()},
		{"longest name", []Credential{{Name: strings.Repeat("n", credential.MaxNameLen), Value: secret("v")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := must(t)(EncodeCredentials(tt.creds))
			got, err := DecodeCredentials(p)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(view(tt.creds), view(got)); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			// The streaming writer produces the same payload.
			var buf bytes.Buffer
			if err := NewHost(rw{nil, &buf}).WriteCredentials(tt.creds); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), frameBytes(TypeCredentials, p)) {
				t.Errorf("WriteCredentials and EncodeCredentials disagree")
			}
		})
	}
}

func TestDecodeCredentialsErrors(t *testing.T) {
	one := func(name string, declared uint32, value string) []byte {
		b := []byte{0, 0, 0, 1, byte(len(name))}
		b = append(b, name...)
		b = append(b, byte(declared>>24), byte(declared>>16), byte(declared>>8), byte(declared))
		return append(b, value...)
	}
	tests := []struct {
		name string
		in   []byte
		err  error
		msg  string
	}{
		{"empty", nil, ErrMalformed, "count"},
		{"count over limit", []byte{0, 0, 0x10, 0x01}, ErrMalformed, "4097, over the limit of 4096"},
		{"count cannot fit", []byte{0, 0, 0x10, 0x00, 1, 'a', 0, 0, 0, 0}, ErrMalformed, "4096 credentials cannot fit in 6 bytes"},
		{"count 2 with 1", append(one("a", 0, "")[:3:3], append([]byte{2}, one("a", 0, "")[4:]...)...), ErrMalformed, "cannot fit"},
		{"empty name", one("", 0, "xxxxx"), credential.ErrInvalidName, "credential 0"},
		{"bad name", one("a:b", 0, ""), credential.ErrInvalidName, `"a:b"`},
		{"value past end", one("a", 10, "short"), ErrMalformed, `credential "a" value: needs 10 bytes, 5 left`},
		{"value length 4 GiB", one("a", 0xffffffff, "short"), ErrMalformed, "needs 4294967295 bytes"},
		{"trailing", one("a", 1, "vx"), ErrMalformed, "1 trailing bytes"},
		{"duplicate", func() []byte {
			b := must(t)(EncodeCredentials([]Credential{{Name: "a"}, {Name: "b"}}))
			b[len(b)-5] = 'a'
			return b
		}(), ErrMalformed, `credential 1 "a": name given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeCredentials(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("DecodeCredentials error = %v, want %v", err, tt.err)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
		})
	}
}

func TestReportRoundTrip(t *testing.T) {
	r := sampleReport()
	tests := []struct {
		name string
		in   Report
		want Report
	}{
		{"sample", r, r},
		{"empty", Report{Outcome: OutcomeReady}, Report{Outcome: OutcomeReady}},
		{"timings cut to ms", Report{Outcome: OutcomeReady, Timings: Timings{
			Read: 1500*time.Microsecond + 999, Verify: -time.Second, Fetch: time.Duration(math.MaxInt64), Write: 999 * time.Microsecond, Total: 49 * 24 * time.Hour,
		}}, Report{Outcome: OutcomeReady, Timings: Timings{
			Read: time.Millisecond, Verify: 0, Fetch: math.MaxUint32 * time.Millisecond, Write: 0, Total: 49 * 24 * time.Hour,
		}}},
		{"text made valid", Report{Outcome: OutcomeFailed, Summary: "\x1b[31mred\nnext\tline\xff\u009b", Credentials: []CredentialReport{
			{Name: "a", Error: "bad\x00byte\r\n"},
		}}, Report{Outcome: OutcomeFailed, Summary: "\uFFFD[31mred next line\uFFFD\uFFFD", Credentials: []CredentialReport{
			{Name: "a", Error: "bad\uFFFDbyte  "},
		}}},
		{"non-ASCII text kept", Report{Outcome: OutcomeReady, Summary: "prêt ✓ 準備完了"}, Report{Outcome: OutcomeReady, Summary: "prêt ✓ 準備完了"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := must(t)(EncodeReport(tt.in))
			got, err := DecodeReport(p)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReportTextCut(t *testing.T) {
	r := Report{Outcome: OutcomeFailed, Summary: strings.Repeat("é", 1000), Credentials: []CredentialReport{{Name: "a", Error: strings.Repeat("x", 300)}}}
	got, err := DecodeReport(must(t)(EncodeReport(r)))
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Summary; len(s) > MaxTextLen || !utf8.ValidString(s) || !strings.HasSuffix(s, "…") || len(s) < MaxTextLen-4 {
		t.Errorf("summary cut to %d bytes (valid %v), want ≤ %d ending in …", len(s), utf8.ValidString(s), MaxTextLen)
	}
	if e := got.Credentials[0].Error; len(e) != MaxErrorTextLen || !strings.HasSuffix(e, "…") {
		t.Errorf("error cut to %d bytes, want %d ending in …", len(e), MaxErrorTextLen)
	}
}

// TestLargestReportFits: every report EncodeReport accepts fits the frame
// limit, so the agent can always send one.
func TestLargestReportFits(t *testing.T) {
	r := Report{Outcome: OutcomeFailed, Summary: strings.Repeat("s", MaxTextLen), AgentVersion: strings.Repeat("v", MaxVersionLen)}
	for i := 0; i < MaxReportEntries; i++ {
		r.Credentials = append(r.Credentials, CredentialReport{
			Name: strings.Repeat("n", credential.MaxNameLen), Size: math.MaxUint64, SHA256Prefix: strings.Repeat("f", 64),
			Delivery: Delivery(strings.Repeat("d", MaxTokenLen)), Verification: Verification(strings.Repeat("v", MaxTokenLen)),
			Error: strings.Repeat("e", MaxErrorTextLen),
		})
	}
	var buf bytes.Buffer
	if err := NewAgent(rw{nil, &buf}).WriteReport(r); err != nil {
		t.Fatal(err)
	}
	t.Logf("largest report: %d bytes of %d", buf.Len(), MaxReportSize)
	if err := ReadMagic(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := NewHost(rw{&buf, nil}).ReadReport()
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Credentials) != MaxReportEntries {
		t.Errorf("decoded %d entries", len(got.Credentials))
	}
}

func TestDecodeReportErrors(t *testing.T) {
	good := must(t)(EncodeReport(Report{Outcome: OutcomeReady, Summary: "ok", Credentials: []CredentialReport{{Name: "a", SHA256Prefix: "aa", Delivery: "smbios", Verification: "digest", Error: "e"}}}))
	// Offsets in good: outcome 0, summary 1–4, agent version 5,
	// generation 6–13, timings 14–33, count 34–37, name 38–39, size 40–47,
	// digest 48–49, delivery 50–56, verification 57–63, error 64–66,
	// unit count 67–68.
	with := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good...)) }
	tests := []struct {
		name string
		in   []byte
		msg  string
	}{
		{"empty", nil, "outcome"},
		{"outcome 0", with(func(b []byte) []byte { b[0] = 0; return b }), "outcome: 0 is neither"},
		{"outcome 3", with(func(b []byte) []byte { b[0] = 3; return b }), "outcome: 3 is neither"},
		{"summary bad utf-8", with(func(b []byte) []byte { b[3] = 0xff; return b }), "summary: byte 0 is not valid UTF-8"},
		{"summary control", with(func(b []byte) []byte { b[4] = 0x1b; return b }), "summary: byte 1 is control character U+001B"},
		{"summary over limit", with(func(b []byte) []byte { b[1], b[2] = 0x04, 0x01; return b }), "summary: 1025 bytes, over the 1024-byte limit"},
		{"count over limit", with(func(b []byte) []byte { b[36] = 0x10; b[37] = 0x01; return b }), "count: 4097"},
		{"count cannot fit", with(func(b []byte) []byte { b[37] = 3; return b }), "3 credentials cannot fit"},
		{"digest over 32", with(func(b []byte) []byte { b[48] = 33; return b }), "digest prefix: 33 bytes, over 32"},
		{"delivery upper case", with(func(b []byte) []byte { b[51] = 'S'; return b }), `credential "a" delivery: byte 0 is 0x53`},
		{"verification over 32", with(func(b []byte) []byte { b[57] = 33; return b }), "verification: 33 bytes"},
		{"error control", with(func(b []byte) []byte { b[66] = '\n'; return b }), "error: byte 0 is control character U+000A"},
		{"trailing", append(append([]byte{}, good...), 0), "1 trailing bytes"},
		{"truncated", good[:len(good)-3], `credential "a" error`},
		{"no unit count", good[:len(good)-2], "unit count"},
		{"unit count over limit", with(func(b []byte) []byte { b[67], b[68] = 0x01, 0x01; return b }), "unit count: 257, over the limit of 256"},
		{"unit count cannot fit", with(func(b []byte) []byte { b[68] = 1; return b }), "1 units cannot fit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeReport(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeReport error = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not say %q", err, tt.msg)
			}
		})
	}
}

// TestReportUnits: a rotation's per-unit outcomes survive the round trip;
// bad ones are refused when encoded and when decoded.
func TestReportUnits(t *testing.T) {
	r := Report{Outcome: OutcomeFailed, Summary: "1 unit did not come back", Generation: 3, Units: []UnitReport{
		{Unit: "api.service", Action: "restart", Credentials: []string{"API_KEY"}, Result: "active", OK: true},
		{Unit: "broken.service", Action: "restart", Credentials: []string{"API_KEY", "DB"}, Result: "failed", Error: "restart broken.service (uses API_KEY, DB): did not come back"},
		{Unit: "quiet.service", Action: "none", Result: "skipped", OK: true},
	}}
	b := must(t)(EncodeReport(r))
	got, err := DecodeReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r.Units, got.Units, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("units differ (-sent +got):\n%s", diff)
	}
	for _, bad := range []UnitReport{
		{Unit: "", Action: "restart"},
		{Unit: "a\nb.service", Action: "restart"},
		{Unit: "a.service", Action: "Restart"},
		{Unit: "a.service", Action: "restart", Credentials: []string{"bad/name"}},
		{Unit: "a.service", Action: "restart", Credentials: make([]string, MaxUnitCredentials+1)},
	} {
		if _, err := EncodeReport(Report{Outcome: OutcomeReady, Units: []UnitReport{bad}}); !errors.Is(err, ErrMalformed) {
			t.Errorf("EncodeReport(%+v) = %v, want ErrMalformed", bad, err)
		}
	}
	if _, err := EncodeReport(Report{Outcome: OutcomeReady, Units: make([]UnitReport, MaxReportUnits+1)}); !errors.Is(err, ErrMalformed) {
		t.Errorf("too many units: %v", err)
	}
	// A decoded ok byte other than 0 or 1 is refused.
	one := must(t)(EncodeReport(Report{Outcome: OutcomeReady, Units: []UnitReport{{Unit: "a.service", Action: "none", Result: "skipped", OK: true}}}))
	one[len(one)-3] = 2
	if _, err := DecodeReport(one); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "neither 0 nor 1") {
		t.Errorf("ok byte 2: %v", err)
	}
}

func TestErrorAndAck(t *testing.T) {
	for _, tt := range []struct {
		code ErrorCode
		text string
		want string
	}{
		{CodeUnavailable, "another session is active", "peer refused: unavailable: another session is active"},
		{CodeBadRequest, "", "peer refused: bad-request"},
		{ErrorCode(99), "new", "peer refused: code 99: new"},
	} {
		t.Run(tt.want, func(t *testing.T) {
			re, err := DecodeError(must(t)(EncodeError(tt.code, tt.text)))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&RemoteError{Code: tt.code, Text: tt.text}, re); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
			if re.Error() != tt.want || !errors.Is(re, ErrRemote) {
				t.Errorf("Error() = %q (Is ErrRemote %v), want %q", re.Error(), errors.Is(re, ErrRemote), tt.want)
			}
		})
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 0}, {0, 1, 0, 1, 0x07}, {0, 1, 0, 2, 'a'}, {0, 1, 0, 0, 'x'}} {
		if _, err := DecodeError(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeError(%q) = %v, want ErrMalformed", bad, err)
		}
	}
	if !CodeUnavailable.Retryable() || !CodeInternal.Retryable() || CodeBadRequest.Retryable() || CodeUnsupportedVersion.Retryable() {
		t.Errorf("Retryable is wrong")
	}
	if s, err := DecodeAck(EncodeAck("recorded\n")); err != nil || s != "recorded " {
		t.Errorf("ack round trip = %q, %v", s, err)
	}
	if _, err := DecodeAck([]byte("a\x07")); !errors.Is(err, ErrMalformed) {
		t.Errorf("DecodeAck(BEL) = %v, want ErrMalformed", err)
	}
	if got := len(EncodeAck(strings.Repeat("a", 5000))); got != MaxTextLen {
		t.Errorf("EncodeAck(5000 bytes) is %d bytes, want %d", got, MaxTextLen)
	}
	if o := []string{OutcomeReady.String(), OutcomeFailed.String(), Outcome(0).String()}; !cmp.Equal(o, []string{"ready", "failed", "outcome 0"}) {
		t.Errorf("Outcome strings %q", o)
	}
}

// agentStream and hostStream are a whole session as bytes.
func agentStream(t *testing.T) []byte {
	var b bytes.Buffer
	c := NewAgent(rw{nil, &b})
	if err := c.WriteChallenge(sampleChallenge()); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteReport(sampleReport()); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func hostStream(t *testing.T) []byte {
	var b bytes.Buffer
	s := NewHost(rw{nil, &b})
	// Leave out the large value: the test cuts at every offset.
	var small []Credential
	for _, c := range sampleCredentials() {
		if c.Value.Len() < 1000 {
			small = append(small, c)
		}
	}
	if err := s.WriteManifest([]byte("envelope")); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteCredentials(small); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAck("recorded"); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestTruncatedAtEveryOffset cuts each side's stream at every offset: the
// reader must fail cleanly (io.EOF at a boundary between frames,
// io.ErrUnexpectedEOF inside one), never panic or succeed.
func TestTruncatedAtEveryOffset(t *testing.T) {
	readAgent := func(b []byte) error {
		if err := ReadMagic(bytes.NewReader(b)); err != nil {
			return err
		}
		s := NewHost(reader(b[len(Magic):]))
		if _, err := s.ReadChallenge(); err != nil {
			return err
		}
		_, err := s.ReadReport()
		return err
	}
	readHost := func(b []byte) error {
		c := NewAgent(reader(b))
		if _, err := c.ReadManifest(); err != nil {
			return err
		}
		if _, err := c.ReadCredentials(); err != nil {
			return err
		}
		_, err := c.ReadAck()
		return err
	}
	for _, side := range []struct {
		name   string
		stream []byte
		read   func([]byte) error
	}{
		{"agent", agentStream(t), readAgent},
		{"host", hostStream(t), readHost},
	} {
		t.Run(side.name, func(t *testing.T) {
			if err := side.read(side.stream); err != nil {
				t.Fatalf("whole stream: %v", err)
			}
			for i := 0; i < len(side.stream); i++ {
				err := side.read(side.stream[:i])
				if err == nil {
					t.Fatalf("stream cut at %d of %d bytes was accepted", i, len(side.stream))
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("stream cut at %d: error %v is neither EOF nor unexpected EOF", i, err)
				}
				noCanary(t, "error", err.Error())
			}
		})
	}
}

// transports are the in-memory streams a conversation runs over. net.Pipe
// opens no socket.
type transport struct {
	name string
	pair func() (io.ReadWriteCloser, io.ReadWriteCloser)
}

func transports() []transport {
	return []transport{
		{"io.Pipe", func() (io.ReadWriteCloser, io.ReadWriteCloser) { a, b := pipePair(); return a, b }},
		{"net.Pipe", func() (io.ReadWriteCloser, io.ReadWriteCloser) { return net.Pipe() }},
	}
}

func TestSession(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			agent, host := tr.pair()
			defer agent.Close()
			defer host.Close()

			type result struct {
				envelope []byte
				creds    []Credential
				ack      string
				err      error
			}
			done := make(chan result, 1)
			go func() {
				var r result
				defer func() { done <- r }()
				c := NewAgent(agent)
				if r.err = c.WriteChallenge(sampleChallenge()); r.err != nil {
					return
				}
				if r.envelope, r.err = c.ReadManifest(); r.err != nil {
					return
				}
				if r.creds, r.err = c.ReadCredentials(); r.err != nil {
					return
				}
				if r.err = c.WriteReport(sampleReport()); r.err != nil {
					return
				}
				r.ack, r.err = c.ReadAck()
			}()

			if err := ReadMagic(host); err != nil {
				t.Fatal(err)
			}
			s := NewHost(host)
			ch, err := s.ReadChallenge()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(sampleChallenge(), ch); diff != "" {
				t.Errorf("challenge (-want +got):\n%s", diff)
			}
			if err := s.WriteManifest([]byte("signed envelope")); err != nil {
				t.Fatal(err)
			}
			if err := s.WriteCredentials(sampleCredentials()); err != nil {
				t.Fatal(err)
			}
			rep, err := s.ReadReport()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(sampleReport(), rep); diff != "" {
				t.Errorf("report (-want +got):\n%s", diff)
			}
			if err := s.WriteAck("recorded"); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("agent: %v", r.err)
			}
			if string(r.envelope) != "signed envelope" {
				t.Errorf("envelope = %q", r.envelope)
			}
			if diff := cmp.Diff(view(sampleCredentials()), view(r.creds)); diff != "" {
				t.Errorf("credentials (-want +got):\n%s", diff)
			}
			if r.ack != "recorded" {
				t.Errorf("ack = %q", r.ack)
			}
		})
	}
}

// TestSessionBusy: an agent in another session answers ERROR with
// CodeUnavailable instead of a CHALLENGE; the host sees a retryable
// *RemoteError.
func TestSessionBusy(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			agent, host := tr.pair()
			defer agent.Close()
			defer host.Close()
			go func() {
				c := NewAgent(agent)
				_ = c.WriteError(CodeUnavailable, "another session is active")
				agent.Close()
			}()
			if err := ReadMagic(host); err != nil {
				t.Fatal(err)
			}
			_, err := NewHost(host).ReadChallenge()
			var re *RemoteError
			if !errors.As(err, &re) || !errors.Is(err, ErrRemote) {
				t.Fatalf("ReadChallenge error = %v, want a *RemoteError", err)
			}
			if re.Code != CodeUnavailable || !re.Code.Retryable() {
				t.Errorf("code = %v", re.Code)
			}
			if want := "read challenge: peer refused: unavailable: another session is active"; err.Error() != want {
				t.Errorf("error = %q, want %q", err, want)
			}
		})
	}
}

// TestWrongOrder: a peer that skips a step gets a clear error naming both
// types, before the reader reads the (possibly huge) payload.
func TestWrongOrder(t *testing.T) {
	var b bytes.Buffer
	if err := NewAgent(rw{nil, &b}).WriteReport(sampleReport()); err != nil {
		t.Fatal(err)
	}
	if err := ReadMagic(&b); err != nil {
		t.Fatal(err)
	}
	_, err := NewHost(rw{&b, nil}).ReadChallenge()
	if !errors.Is(err, ErrUnexpectedType) || !strings.Contains(err.Error(), "got report, want challenge or error") {
		t.Fatalf("ReadChallenge = %v, want ErrUnexpectedType naming report and challenge", err)
	}
	_, err = NewAgent(reader(frameBytes(TypeCredentials, []byte{0, 0, 0, 0}))).ReadManifest()
	if !errors.Is(err, ErrUnexpectedType) || !strings.Contains(err.Error(), "got credentials, want manifest or error") {
		t.Fatalf("ReadManifest = %v, want ErrUnexpectedType naming credentials and manifest", err)
	}
	_, err = NewAgent(reader(frameBytes(TypeAck, nil))).ReadCredentials()
	if !errors.Is(err, ErrUnexpectedType) || !strings.Contains(err.Error(), "got ack, want credentials or error") {
		t.Fatalf("ReadCredentials = %v, want ErrUnexpectedType naming ack, credentials and error", err)
	}
	_, err = NewAgent(reader(frameBytes(TypeError, []byte{0, 0, 0, 0}))).ReadAck()
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("ReadAck(malformed error frame) = %v, want ErrMalformed", err)
	}
}

func TestCredentials16MiB(t *testing.T) {
	value := make([]byte, 16<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range value {
		value[i] = byte(rng.UintN(256))
	}
	want := []Credential{{Name: "disk-key", Value: credential.NewSecret(value)}, {Name: "small", Value: secret("x")}}
	guest, host := pipePair()
	defer guest.Close()
	errc := make(chan error, 1)
	go func() {
		errc <- NewHost(host).WriteCredentials(want)
		host.CloseWrite()
	}()
	got, err := NewAgent(guest).ReadCredentials()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(view(want), view(got)); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}
	if got[0].Value.SHA256() != sha256.Sum256(value) {
		t.Errorf("16 MiB value differs")
	}
}
