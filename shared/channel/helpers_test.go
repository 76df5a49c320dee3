package channel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// canaryToken is recognisable so tests can assert it never shows up in an
// error or printed value: a credential value.
const canaryToken = "TOKEN-CANARY-0123456789abcdefghi"

// credView is what tests compare and print instead of a credential: its
// name, length and a digest, never the value.
type credView struct {
	Name   string
	Len    int
	SHA256 string
}

func view(cs []Credential) []credView {
	out := make([]credView, len(cs))
	for i, c := range cs {
		sum := c.Value.SHA256()
		out[i] = credView{c.Name, c.Value.Len(), hex.EncodeToString(sum[:8])}
	}
	return out
}

func secret(s string) credential.Secret { return credential.NewSecret([]byte(s)) }

func sampleChallenge() Challenge {
	return Challenge{
		Version:      ProtocolVersion,
		Nonce:        [ChallengeSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32},
		Generation:   1 << 40,
		BootID:       "3b2a9f4e-1c7d-4e2b-9a55-0f1e2d3c4b5a",
		AgentVersion: "vmcred-guest 0.1.0",
	}
}

func sampleCredentials() []Credential {
	return []Credential{
		{Name: "db-password", Value: secret(canaryToken)},
		{Name: "empty", Value: credential.Secret{}},
		{Name: "tls.key", Value: credential.NewSecret(bytes.Repeat([]byte{0, 1, 2, 0xff}, 20000))},
		{Name: "k=v with space~@*", Value: secret("x")},
	}
}

func sampleReport() Report {
	sum := sha256.Sum256([]byte("s3cr3t-db"))
	return Report{
		Outcome:      OutcomeFailed,
		Summary:      "1 of 3 credentials failed: tls.key mismatch",
		AgentVersion: "vmcred-guest 0.1.0",
		Generation:   7,
		Timings: Timings{
			Read: 3 * time.Millisecond, Verify: 12 * time.Millisecond, Fetch: 140 * time.Millisecond,
			Write: 2 * time.Millisecond, Total: 157 * time.Millisecond,
		},
		Credentials: []CredentialReport{
			{Name: "db-password", Size: 9, SHA256Prefix: DigestPrefix(sum), Delivery: DeliveryChannel, Verification: VerifiedSignature},
			{Name: "tls.key", Size: 80000, SHA256Prefix: "00ff", Delivery: DeliverySMBIOS, Verification: VerifyMismatch, Error: "digest differs from the manifest"},
			{Name: "api", Size: 0, Delivery: DeliveryFwCfg, Verification: VerifyMissing, Error: "not found"},
			{Name: "unlisted", Size: 1 << 40, SHA256Prefix: strings.Repeat("ab", 32), Verification: VerifyUnlisted},
		},
	}
}

// duplex is one end of an in-memory full-duplex stream made of two
// io.Pipes; CloseWrite is a half-close, as on a vsock or Unix stream.
type duplex struct {
	r *io.PipeReader
	w *io.PipeWriter
}

func (d duplex) Read(p []byte) (int, error)  { return d.r.Read(p) }
func (d duplex) Write(p []byte) (int, error) { return d.w.Write(p) }
func (d duplex) CloseWrite() error           { return d.w.Close() }
func (d duplex) Close() error {
	d.w.Close()
	return d.r.Close()
}

func pipePair() (duplex, duplex) {
	r1, w1 := io.Pipe()
	r2, w2 := io.Pipe()
	return duplex{r: r1, w: w2}, duplex{r: r2, w: w1}
}

// rw joins a reader and a writer.
type rw struct {
	io.Reader
	io.Writer
}

// reader returns a ReadWriter that reads b and refuses writes.
func reader(b []byte) io.ReadWriter { return rw{bytes.NewReader(b), failWriter{}} }

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

// frameBytes is a frame as it appears on the wire.
func frameBytes(t Type, payload []byte) []byte {
	var b bytes.Buffer
	if err := NewHost(rw{nil, &b}).WriteFrame(t, payload); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// must returns a function that fails t on an encoding error, so that
// must(t)(EncodeChallenge(c)) is the payload.
func must(t testing.TB) func([]byte, error) []byte {
	return func(p []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// noCanary fails if s holds the canary token.
func noCanary(t testing.TB, what, s string) {
	t.Helper()
	if strings.Contains(s, canaryToken) {
		t.Errorf("%s reveals the token", what)
	}
}
