package channel

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode"
	"unicode/utf8"
)

// directWrite is the size from which an encoder bound to a writer passes a
// byte slice straight through instead of copying it into its buffer, so a
// large secret is not copied once more on its way out.
const directWrite = 32 << 10

// encoder appends the wire form of values to buf. With w set, it writes buf
// out whenever it grows past directWrite, and writes large slices directly.
// The first write error sticks and later calls do nothing.
type encoder struct {
	w   io.Writer
	buf []byte
	err error
}

func (e *encoder) u8(v uint8) { e.buf = append(e.buf, v) }
func (e *encoder) u16(v uint16) {
	e.buf = binary.BigEndian.AppendUint16(e.buf, v)
}
func (e *encoder) u32(v uint32) {
	e.buf = binary.BigEndian.AppendUint32(e.buf, v)
}
func (e *encoder) u64(v uint64) {
	e.buf = binary.BigEndian.AppendUint64(e.buf, v)
}

// str8 and str16 write a length (one or two bytes) and the bytes; callers
// have checked the length already.
func (e *encoder) str8(s string) {
	e.u8(uint8(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *encoder) str16(s string) {
	e.u16(uint16(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *encoder) bytes(p []byte) {
	if e.w == nil || len(p) < directWrite {
		e.buf = append(e.buf, p...)
		if e.w != nil && len(e.buf) >= directWrite {
			e.flush()
		}
		return
	}
	e.flush()
	if e.err == nil {
		_, e.err = e.w.Write(p)
	}
}

// flush writes out and wipes the buffer, which may hold secret bytes.
func (e *encoder) flush() {
	if e.w == nil {
		return
	}
	if len(e.buf) > 0 && e.err == nil {
		_, e.err = e.w.Write(e.buf)
	}
	clear(e.buf)
	e.buf = e.buf[:0]
}

// decoder reads values from a payload with bounds checks at every step. The
// first error sticks: later calls return zero values, and err says what
// went wrong first, naming the message and field but never a value.
type decoder struct {
	b   []byte
	off int
	msg string // "hello", "credentials", …
	err error
}

func (d *decoder) failf(field, format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("decode %s: %s: %s: %w", d.msg, field, fmt.Sprintf(format, args...), ErrMalformed)
	}
}

// take returns the next n bytes, capped so that appending to the result
// cannot overwrite what follows.
func (d *decoder) take(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.failf(field, "needs %d bytes, %d left", n, len(d.b)-d.off)
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u8(field string) uint8 {
	if p := d.take(field, 1); p != nil {
		return p[0]
	}
	return 0
}

func (d *decoder) u16(field string) uint16 {
	if p := d.take(field, 2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32(field string) uint32 {
	if p := d.take(field, 4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64(field string) uint64 {
	if p := d.take(field, 8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) str8(field string, max int) string {
	return d.str(field, int(d.u8(field+" length")), max)
}

func (d *decoder) str16(field string, max int) string {
	return d.str(field, int(d.u16(field+" length")), max)
}

func (d *decoder) str(field string, n, max int) string {
	if d.err != nil {
		return ""
	}
	if n > max {
		d.failf(field, "%d bytes, over the %d-byte limit", n, max)
		return ""
	}
	return string(d.take(field, n))
}

// end fails if bytes are left over: every message has exactly one encoding.
func (d *decoder) end() error {
	if d.err == nil && d.off != len(d.b) {
		d.failf("end", "%d trailing bytes", len(d.b)-d.off)
	}
	return d.err
}

// Field syntaxes. Each has a check (used by decoders and by encoders for
// fields that identify something) or a sanitizer (used by encoders for free
// text, so that a long or odd error message never stops a report).

// checkPrintable reports why s is not 0–max bytes of printable ASCII.
func checkPrintable(s string, max int) string {
	if len(s) > max {
		return fmt.Sprintf("%d bytes, over the %d-byte limit", len(s), max)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return fmt.Sprintf("byte %d is 0x%02x, not printable ASCII", i, s[i])
		}
	}
	return ""
}

// checkToken reports why s is not 0–MaxTokenLen bytes of [a-z0-9_-], the
// syntax of Delivery and Verification values.
func checkToken(s string) string {
	if len(s) > MaxTokenLen {
		return fmt.Sprintf("%d bytes, over the %d-byte limit", len(s), MaxTokenLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Sprintf("byte %d is 0x%02x, not [a-z0-9_-]", i, c)
		}
	}
	return ""
}

// checkText reports why s is not valid text of at most max bytes: valid
// UTF-8 without control characters (C0, DEL, C1), so that a peer cannot
// send terminal escapes into the host's logs or a user's terminal.
func checkText(s string, max int) string {
	if len(s) > max {
		return fmt.Sprintf("%d bytes, over the %d-byte limit", len(s), max)
	}
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return fmt.Sprintf("byte %d is not valid UTF-8", i)
			}
		}
		if unicode.IsControl(r) {
			return fmt.Sprintf("byte %d is control character U+%04X", i, r)
		}
	}
	return ""
}

// sanitizeText makes s pass checkText: invalid UTF-8 and control
// characters become U+FFFD (tab, CR and LF a space), and text over max
// bytes is cut at a rune boundary and ends in "…".
func sanitizeText(s string, max int) string {
	if checkText(s, max) == "" {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError:
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				r = unicode.ReplacementChar
			}
		case r == '\t' || r == '\n' || r == '\r':
			r = ' '
		case unicode.IsControl(r):
			r = unicode.ReplacementChar
		}
		b.WriteRune(r)
	}
	s = b.String()
	if len(s) <= max {
		return s
	}
	const ellipsis = "…"
	cut := max - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// millis converts d to whole milliseconds for the wire, clamped to uint32.
func millis(d int64) uint32 {
	ms := d / 1e6
	switch {
	case ms < 0:
		return 0
	case ms > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(ms)
}
