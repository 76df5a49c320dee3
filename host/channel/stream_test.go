package channel

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	proto "github.com/vmcred/vmcred/shared/channel"
)

// TestStreamedSourceChanged: a large source changed after pack (same size,
// one byte) is streamed, but its last holdBack bytes are held back, the
// hash mismatch found, and the connection closed: the agent gets a
// truncated CREDENTIALS frame, never a complete one; the host's drop event
// names the credential and the file; the fetch is not consumed.
func TestStreamedSourceChanged(t *testing.T) {
	for _, size := range []int{2 * hashChunk, 3*hashChunk + 12345, 16 << 20} {
		v := randomBytes(t, size)
		f := newFixture(t, map[string][]byte{"big": v, "small": []byte("small-value")})
		var p string
		for _, c := range f.state.Credentials {
			if c.Name == "big" {
				p = c.File
			}
		}
		changed := bytes.Clone(v)
		changed[size/3] ^= 0x40
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, changed, 0o600); err != nil {
			t.Fatal(err)
		}
		path, ev := serve(t, f, nil)
		c := dial(t, path)
		cl := proto.NewClient(c)
		if err := cl.WriteHello(goodHello()); err != nil {
			t.Fatal(err)
		}
		// What crossed the wire: the frame is cut before its end.
		var got bytes.Buffer
		if _, err := io.Copy(&got, c); err != nil {
			t.Fatal(err)
		}
		want := 5 + 4 + (1 + len("big") + 4 + size) + (1 + len("small") + 4 + len("small-value"))
		if got.Len() >= want || got.Len() > want-holdBack {
			t.Fatalf("size %d: received %d bytes of a %d-byte frame, want at most %d", size, got.Len(), want, want-holdBack)
		}
		// Streamed: everything up to the held-back end of "big" went out.
		if sent := 5 + 4 + 1 + len("big") + 4 + size - holdBack; got.Len() != sent {
			t.Errorf("size %d: received %d bytes, want %d (all but the last %d of the value)", size, got.Len(), sent, holdBack)
		}
		_, err := proto.NewClient(&got).ReadCredentials()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("size %d: decoding what arrived: %v, want io.ErrUnexpectedEOF", size, err)
		}
		ev.waitFor(t, "drop naming the change", func() bool { return ev.droppedWith(ErrChanged) == 1 })
		ev.mu.Lock()
		msg := ev.dropped[0].Error()
		nfetched := len(ev.fetched)
		ev.mu.Unlock()
		if !strings.Contains(msg, `"big"`) || !strings.Contains(msg, p) || !strings.Contains(msg, "sha256") {
			t.Errorf("drop event %q: want the name, the file and the digest", msg)
		}
		if nfetched != 0 {
			t.Errorf("a Fetched event for a cut frame")
		}
		// Not consumed: once the source is fixed, the fetch works.
		if err := os.WriteFile(p, v, 0o600); err != nil {
			t.Fatal(err)
		}
		creds, _ := fetchAndReport(t, path, goodHello())
		if len(creds) != 2 || creds[0].Name != "big" || !bytes.Equal(creds[0].Value.Reveal(), v) || string(creds[1].Value.Reveal()) != "small-value" {
			t.Fatalf("size %d: the fetch after the fix did not deliver the values", size)
		}
	}
}

// TestStreamedSourceResized: a large source whose size changed after
// openSources checked it (it grew or shrank while being sent) is cut as
// well. Tested on streamSource directly, the only way to change the file
// between the check and the read.
func TestStreamedSourceResized(t *testing.T) {
	const size = 3 * hashChunk
	v := randomBytes(t, size)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"grew", append(bytes.Clone(v), 'x')},
		{"shrank", v[:size-1]},
		{"shrank a lot", v[:hashChunk]},
	} {
		f := newFixture(t, map[string][]byte{"big": v})
		sc := f.state.Credentials[0]
		fh, err := openSource(sc.File, sc.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(sc.File, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sc.File, tc.data, 0o600); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = streamSource(&out, source{sc: sc, f: fh})
		fh.Close()
		if !errors.Is(err, ErrChanged) {
			t.Errorf("%s: got %v, want ErrChanged", tc.name, err)
		}
		if out.Len() > size-holdBack {
			t.Errorf("%s: wrote %d bytes, want at most %d", tc.name, out.Len(), size-holdBack)
		}
	}
}

// TestStreamedSeveral: several large sources in one frame, around small
// and empty ones, arrive whole and in order.
func TestStreamedSeveral(t *testing.T) {
	vals := map[string][]byte{"a-big": randomBytes(t, 2*hashChunk+1), "b-empty": {}, "c-big": randomBytes(t, 5*hashChunk-3), "d-small": []byte("d"), "e-big": randomBytes(t, 4*hashChunk)}
	f := newFixture(t, vals)
	path, ev := serve(t, f, nil)
	creds, _ := fetchAndReport(t, path, goodHello())
	if len(creds) != len(vals) {
		t.Fatalf("got %d credentials, want %d", len(creds), len(vals))
	}
	for i, c := range creds {
		if c.Name != f.state.Credentials[i].Name || !bytes.Equal(c.Value.Reveal(), vals[c.Name]) {
			t.Errorf("credential %d (%s): wrong name or value", i, c.Name)
		}
	}
	ev.waitFor(t, "the fetch", func() bool { return len(ev.fetched) == 1 })
}
