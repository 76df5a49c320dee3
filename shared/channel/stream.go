package channel

import (
	"errors"
	"fmt"
)

// CredentialHeader is what StartCredentials needs to know about a
// credential before its value is written: its name and its value's length.
type CredentialHeader struct {
	Name string
	Size int
}

// ErrIncomplete: a CredentialsWriter was closed before every value's
// announced bytes were written, or was given more than announced.
var ErrIncomplete = errors.New("credentials frame not written as announced")

// CredentialsWriter streams one CREDENTIALS frame whose names and value
// lengths were given up front, so a value can be sent as it is read
// instead of after it has been read whole. Write the values in order, as
// many bytes as announced for each, in any number of Write calls; then
// Close. Each Write goes out before it returns, apart from the next
// credential's name and length, which wait for its first value byte (or
// Close). Bytes not yet written are never sent, so a caller that stops
// early and closes the connection leaves the peer with a truncated frame,
// never a complete one.
type CredentialsWriter struct {
	c     *Conn
	heads []CredentialHeader
	next  int // the credential whose name and length are due next
	left  int // bytes of the current value still due
	e     *encoder
}

// StartCredentials checks heads as WriteCredentials checks credentials
// and returns a writer for a CREDENTIALS frame carrying them. Nothing is
// written yet.
func (c *Conn) StartCredentials(heads []CredentialHeader) (*CredentialsWriter, error) {
	n, err := checkEntries(len(heads), func(i int) (string, int) { return heads[i].Name, heads[i].Size })
	if err != nil {
		return nil, err
	}
	if err := checkOut(TypeCredentials, n); err != nil {
		return nil, err
	}
	e := c.frame(TypeCredentials, n)
	e.u32(uint32(len(heads)))
	return &CredentialsWriter{c: c, heads: heads, e: e}, nil
}

// advance queues the name and length of every credential due before the
// next value byte: all those of length 0, and the next non-empty one.
func (w *CredentialsWriter) advance() {
	for w.left == 0 && w.next < len(w.heads) {
		h := w.heads[w.next]
		w.e.str8(h.Name)
		w.e.u32(uint32(h.Size))
		w.left = h.Size
		w.next++
	}
}

// Write sends the next len(p) bytes of the values, in order.
func (w *CredentialsWriter) Write(p []byte) (int, error) {
	done := 0
	for len(p) > 0 && w.e.err == nil {
		w.advance()
		if w.left == 0 {
			return done, fmt.Errorf("write %s frame: %d bytes more than announced: %w", TypeCredentials, len(p), ErrIncomplete)
		}
		n := min(len(p), w.left)
		w.e.bytes(p[:n])
		w.left -= n
		done += n
		p = p[n:]
	}
	w.e.flush()
	if w.e.err != nil {
		return done, fmt.Errorf("write %s frame: %w", TypeCredentials, w.e.err)
	}
	return done, nil
}

// Close ends the frame. It fails with ErrIncomplete, sending nothing more,
// if some value is not whole.
func (w *CredentialsWriter) Close() error {
	if w.e.err != nil {
		return fmt.Errorf("write %s frame: %w", TypeCredentials, w.e.err)
	}
	w.advance()
	if w.left != 0 || w.next != len(w.heads) {
		clear(w.e.buf)
		w.e.buf = w.e.buf[:0]
		return fmt.Errorf("write %s frame: closed with %d bytes of credential %q still due: %w", TypeCredentials, w.left, w.heads[w.next-1].Name, ErrIncomplete)
	}
	w.e.flush()
	if w.e.err != nil {
		return fmt.Errorf("write %s frame: %w", TypeCredentials, w.e.err)
	}
	return nil
}
