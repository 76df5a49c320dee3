package channel

import (
	"io"
	"testing"

	"github.com/vmcred/vmcred/shared/credential"
)

// BenchmarkCredentials16MiB sends one 16 MiB credential from server to
// client over an in-memory stream and decodes it; MB/s is payload
// throughput through WriteCredentials and ReadCredentials.
func BenchmarkCredentials16MiB(b *testing.B) {
	value := make([]byte, 16<<20)
	for i := range value {
		value[i] = byte(i * 7)
	}
	creds := []Credential{{Name: "disk-key", Value: credential.NewSecret(value)}}
	for _, tr := range transports() {
		b.Run(tr.name, func(b *testing.B) {
			guest, host := tr.pair()
			defer guest.Close()
			defer host.Close()
			b.SetBytes(int64(len(value)))
			b.ReportAllocs()
			s, c := NewHost(host), NewAgent(guest)
			errc := make(chan error, 1)
			for b.Loop() {
				go func() { errc <- s.WriteCredentials(creds) }()
				got, err := c.ReadCredentials()
				if err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				if got[0].Value.Len() != len(value) {
					b.Fatalf("got %d bytes", got[0].Value.Len())
				}
			}
		})
	}
	b.Run("decode-only", func(b *testing.B) {
		p, err := EncodeCredentials(creds)
		if err != nil {
			b.Fatal(err)
		}
		frame := frameBytes(TypeCredentials, p)
		b.SetBytes(int64(len(value)))
		b.ReportAllocs()
		for b.Loop() {
			c := NewAgent(rw{&byteReader{b: frame}, io.Discard})
			if _, err := c.ReadCredentials(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// byteReader is bytes.Reader without WriteTo, so reads go through
// readPayload as they would on a socket.
type byteReader struct {
	b   []byte
	off int
}

func (r *byteReader) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}
