package channel

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// holdBack is how many bytes at the end of each streamed credential wait
// until its SHA-256 is complete and matches the manifest. A source that
// changed since pack (same size, other bytes) is found only when its hash
// is complete: its last holdBack bytes are then never sent, and the
// connection is closed, so the guest sees a truncated CREDENTIALS frame
// (a failed attempt), never a complete frame with wrong data.
const holdBack = 64 << 10

// streamSlots is how many hashChunk buffers a streamed credential cycles
// through: the reader fills one while the socket and the hasher work on
// the others. Memory per fetch: streamSlots MiB + holdBack, whatever the
// credential's size.
const streamSlots = 4

// source is one credential ready to stream: a file opened and checked
// against the manifest's size, or a value in memory checked already.
type source struct {
	sc    StateCredential // File, Size and SHA256 for a file
	f     *os.File
	value credential.Secret // when f is nil
}

// openSources opens every channel credential (the size is checked, the
// content is checked while it is sent) and, in bootstrap mode, puts the
// manifest first. An error names the credential and its source, never a
// value; nothing stays open or in memory after it.
func (st *State) openSources(ctx context.Context) ([]source, error) {
	out := make([]source, 0, len(st.Credentials)+1)
	fail := func(err error) ([]source, error) {
		closeSources(out)
		return nil, err
	}
	if st.Bootstrap {
		m, err := st.loadManifest()
		if err != nil {
			return fail(err)
		}
		out = append(out, source{sc: StateCredential{Name: m.Name}, value: m.Value})
	}
	for _, c := range st.Credentials {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if c.Static != nil {
			v := credential.NewSecret([]byte(*c.Static))
			e := manifest.Entry{Name: c.Name, Size: uint64(c.Size), SHA256: c.SHA256}
			if err := e.MatchesDigest(uint64(v.Len()), v.SHA256()); err != nil {
				v.Wipe()
				return fail(fmt.Errorf("credential %q from --static: %w: %w", c.Name, ErrChanged, err))
			}
			out = append(out, source{sc: c, value: v})
			continue
		}
		if c.Size < 2*hashChunk {
			// Small: read and checked now, so a change is still answered
			// with ERROR; streaming it would gain next to nothing.
			b, sum, err := readExact(c.File, c.Size)
			if err != nil {
				return fail(fmt.Errorf("credential %q from %s: %w", c.Name, c.File, err))
			}
			v := credential.NewSecret(b)
			e := manifest.Entry{Name: c.Name, Size: uint64(c.Size), SHA256: c.SHA256}
			if err := e.MatchesDigest(uint64(v.Len()), sum); err != nil {
				v.Wipe()
				return fail(fmt.Errorf("credential %q from %s: %w: %w", c.Name, c.File, ErrChanged, err))
			}
			out = append(out, source{sc: c, value: v})
			continue
		}
		f, err := openSource(c.File, c.Size)
		if err != nil {
			return fail(fmt.Errorf("credential %q from %s: %w", c.Name, c.File, err))
		}
		out = append(out, source{sc: c, f: f})
	}
	return out, nil
}

func closeSources(srcs []source) {
	for _, s := range srcs {
		if s.f != nil {
			s.f.Close()
		}
		s.value.Wipe()
	}
}

// streamSource writes a file source (of at least 2 × hashChunk bytes:
// smaller ones are read by openSources) to w as it is read, hashing
// them meanwhile, and its last holdBack bytes only once the SHA-256 of the
// whole matches the manifest. An error wrapping ErrChanged means the rest
// was not written: the caller must close the connection.
func streamSource(w io.Writer, s source) error {
	c := s.sc
	changed := func(err error) error {
		return fmt.Errorf("credential %q from %s: %w: %w", c.Name, c.File, ErrChanged, err)
	}
	size := c.Size
	e := manifest.Entry{Name: c.Name, Size: uint64(size), SHA256: c.SHA256}
	buf := make([]byte, streamSlots*hashChunk+holdBack+1)
	defer clear(buf)
	free := make(chan []byte, streamSlots+1)
	for i := range streamSlots {
		free <- buf[i*hashChunk : (i+1)*hashChunk : (i+1)*hashChunk]
	}
	tail := buf[streamSlots*hashChunk:]
	// The hasher takes each chunk after it is read, hashes it while it is
	// written, and hands its buffer back.
	work := make(chan []byte, streamSlots+1)
	sumc := make(chan [sha256.Size]byte, 1)
	go func() {
		h := sha256.New()
		for p := range work {
			h.Write(p)
			free <- p[:cap(p)]
		}
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		sumc <- sum
	}()
	finished := false
	finish := func() [sha256.Size]byte {
		if !finished {
			close(work)
			finished = true
		}
		return <-sumc
	}
	defer func() {
		if !finished {
			finish()
		}
	}()

	for left := size - holdBack; left > 0; {
		p := <-free
		p = p[:min(int64(len(p)), left)]
		if _, err := io.ReadFull(s.f, p); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return changed(fmt.Errorf("shorter than %d bytes", size))
			}
			return fmt.Errorf("credential %q from %s: %w", c.Name, c.File, unwrapPath(err))
		}
		work <- p
		if _, err := w.Write(p); err != nil {
			return err
		}
		left -= int64(len(p))
	}
	// The last holdBack bytes, and one more to see a file that grew.
	n, err := io.ReadFull(s.f, tail)
	switch {
	case err == nil:
		return changed(fmt.Errorf("more than %d bytes", size))
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
	default:
		return fmt.Errorf("credential %q from %s: %w", c.Name, c.File, unwrapPath(err))
	}
	if n != holdBack {
		return changed(fmt.Errorf("shorter than %d bytes", size))
	}
	work <- tail[:n]
	if err := e.MatchesDigest(uint64(size), finish()); err != nil {
		return changed(err)
	}
	_, err = w.Write(tail[:n])
	return err
}

// streamCredentials sends the CREDENTIALS frame for srcs, and returns the
// bytes of values sent. An error means the frame is not complete.
func streamCredentials(conn *proto.Conn, srcs []source) (int64, error) {
	heads := make([]proto.CredentialHeader, len(srcs))
	var total int64
	for i, s := range srcs {
		n := s.value.Len()
		if s.f != nil {
			n = int(s.sc.Size)
		}
		heads[i] = proto.CredentialHeader{Name: s.sc.Name, Size: n}
		total += int64(n)
	}
	w, err := conn.StartCredentials(heads)
	if err != nil {
		return 0, err
	}
	for _, s := range srcs {
		if s.f == nil {
			_, err = w.Write(s.value.Reveal())
		} else {
			err = streamSource(w, s)
		}
		if err != nil {
			return 0, err
		}
	}
	return total, w.Close()
}
