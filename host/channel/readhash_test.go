package channel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"testing"
	"testing/iotest"
)

// TestReadHashing: the pipelined read gives io.ReadFull's count and error
// and the SHA-256 of what it read, whatever the sizes and read patterns.
func TestReadHashing(t *testing.T) {
	for _, size := range []int{0, 1, hashChunk - 1, 2*hashChunk - 1, 2 * hashChunk, 2*hashChunk + 1, 5*hashChunk + 7} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*31 + i>>11)
		}
		for _, tc := range []struct {
			name   string
			bufLen int // len of the buffer given
			r      func() io.Reader
		}{
			{"exact", size, func() io.Reader { return bytes.NewReader(data) }},
			{"one more (EOF)", size + 1, func() io.Reader { return bytes.NewReader(data) }},
			{"one byte at a time", size + 1, func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) }},
			{"half reads", size + 1, func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) }},
			{"shorter buffer", size / 2, func() io.Reader { return bytes.NewReader(data) }},
		} {
			if tc.name == "one byte at a time" && size > 3*hashChunk {
				continue // slow, and the chunk logic is covered by the others
			}
			b := make([]byte, tc.bufLen)
			wantN, wantErr := io.ReadFull(tc.r(), make([]byte, tc.bufLen))
			n, sum, err := readHashing(tc.r(), b)
			if n != wantN || err != wantErr {
				t.Errorf("size %d, %s: got %d, %v; want %d, %v", size, tc.name, n, err, wantN, wantErr)
				continue
			}
			if want := sha256.Sum256(data[:n]); sum != want {
				t.Errorf("size %d, %s: digest of %d bytes is wrong", size, tc.name, n)
			}
			if !bytes.Equal(b[:n], data[:n]) {
				t.Errorf("size %d, %s: bytes read differ", size, tc.name)
			}
		}
	}
	// A read error mid-way is returned as is.
	boom := errors.New("boom")
	for _, at := range []int{0, hashChunk, 3 * hashChunk} {
		r := io.MultiReader(bytes.NewReader(make([]byte, at)), iotest.ErrReader(boom))
		if n, _, err := readHashing(r, make([]byte, 5*hashChunk)); !errors.Is(err, boom) || n != at {
			t.Errorf("read error after %d bytes: got %d, %v; want %d, %v", at, n, err, at, boom)
		}
	}
}

// TestLoadLargeSource: a source over two hash chunks (hashed while read)
// loads intact, and one changed in its last byte is refused.
func TestLoadLargeSource(t *testing.T) {
	v := randomBytes(t, 3*hashChunk+5)
	f := newFixture(t, map[string][]byte{"big": v})
	creds, err := f.state.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 1 || !bytes.Equal(creds[0].Value.Reveal(), v) {
		t.Fatalf("loaded %d credentials, value intact: %v", len(creds), len(creds) == 1 && bytes.Equal(creds[0].Value.Reveal(), v))
	}
	changed := bytes.Clone(v)
	changed[len(changed)-1] ^= 1
	p := f.state.Credentials[0].File
	os.Remove(p)
	if err := os.WriteFile(p, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.state.Load(context.Background()); !errors.Is(err, ErrChanged) {
		t.Fatalf("changed source: got %v, want ErrChanged", err)
	}
}

// BenchmarkStateLoad16MiB is what the server does before it can answer a
// HELLO with a 16 MiB credential: read the source fresh and check its
// SHA-256 against the manifest. "sha256-only" is the floor: the hash of
// 16 MiB already in memory.
func BenchmarkStateLoad16MiB(b *testing.B) {
	v := make([]byte, 16<<20)
	for i := range v {
		v[i] = byte(i * 7)
	}
	b.Run("load", func(b *testing.B) {
		f := newFixture(b, map[string][]byte{"big": v})
		b.SetBytes(int64(len(v)))
		b.ReportAllocs()
		for b.Loop() {
			creds, err := f.state.Load(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			creds[0].Value.Wipe()
		}
	})
	b.Run("sha256-only", func(b *testing.B) {
		b.SetBytes(int64(len(v)))
		for b.Loop() {
			sha256.Sum256(v)
		}
	})
}
