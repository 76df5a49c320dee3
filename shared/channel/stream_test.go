package channel

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmcred/vmcred/shared/credential"
)

// TestCredentialsWriter: a frame streamed in pieces is byte for byte the
// one WriteCredentials writes; a writer closed short, or given too much,
// fails with ErrIncomplete and never sends the frame's end.
func TestCredentialsWriter(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	creds := []Credential{
		{Name: "empty-first", Value: credential.NewSecret(nil)},
		{Name: "big", Value: credential.NewSecret(big)},
		{Name: "empty", Value: credential.NewSecret(nil)},
		{Name: "small", Value: credential.NewSecret([]byte("v"))},
		{Name: "empty-last", Value: credential.NewSecret(nil)},
	}
	var want bytes.Buffer
	if err := NewHost(&rwBuf{w: &want}).WriteCredentials(creds); err != nil {
		t.Fatal(err)
	}
	heads := make([]CredentialHeader, len(creds))
	for i, c := range creds {
		heads[i] = CredentialHeader{Name: c.Name, Size: c.Value.Len()}
	}
	for _, piece := range []int{1, 7, 4096, 50000, 1 << 20} {
		var got bytes.Buffer
		w, err := NewHost(&rwBuf{w: &got}).StartCredentials(heads)
		if err != nil {
			t.Fatal(err)
		}
		all := append(bytes.Clone(big), 'v')
		for len(all) > 0 {
			n := min(piece, len(all))
			if m, err := w.Write(all[:n]); err != nil || m != n {
				t.Fatalf("piece %d: write: %d, %v", piece, m, err)
			}
			all = all[n:]
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("piece %d: streamed frame differs from WriteCredentials' (%d vs %d bytes)", piece, got.Len(), want.Len())
		}
		dec, err := NewAgent(&rwBuf{r: &got}).ReadCredentials()
		if err != nil || len(dec) != len(creds) || !bytes.Equal(dec[1].Value.Reveal(), big) {
			t.Fatalf("piece %d: decode: %v", piece, err)
		}
	}

	// Short: the frame's end is never sent.
	var got bytes.Buffer
	w, err := NewHost(&rwBuf{w: &got}).StartCredentials(heads)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(big[:len(big)-1]); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("close short: %v, want ErrIncomplete", err)
	}
	if got.Len() >= want.Len()-2 {
		t.Fatalf("close short: %d of %d bytes sent", got.Len(), want.Len())
	}
	// Too much.
	w, _ = NewHost(&rwBuf{w: &bytes.Buffer{}}).StartCredentials(heads)
	if _, err := w.Write(append(bytes.Clone(big), "vx"...)); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("write too much: %v, want ErrIncomplete", err)
	}
	// The rules of WriteCredentials.
	for _, bad := range [][]CredentialHeader{
		{{Name: "a", Size: 1}, {Name: "a", Size: 1}},
		{{Name: "bad/name", Size: 1}},
		{{Name: "neg", Size: -1}},
		{{Name: "huge", Size: MaxCredentialsSize}},
	} {
		if _, err := NewHost(&rwBuf{w: &bytes.Buffer{}}).StartCredentials(bad); err == nil {
			t.Errorf("StartCredentials(%v) accepted", bad)
		}
	}
}

// rwBuf is an io.ReadWriter over two buffers.
type rwBuf struct {
	r *bytes.Buffer
	w *bytes.Buffer
}

func (b *rwBuf) Read(p []byte) (int, error)  { return b.r.Read(p) }
func (b *rwBuf) Write(p []byte) (int, error) { return b.w.Write(p) }
