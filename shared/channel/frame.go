// Package channel is vmcred's session protocol between the host and the
// guest agent over one byte stream: AF_VSOCK (QEMU vhost-vsock), the Unix
// socket that cloud-hypervisor and Firecracker expose for hybrid vsock
// (after its CONNECT line), a plain Unix socket in tests, or an in-memory
// pipe (DESIGN §8).
//
// # Who speaks first
//
// The host dials; the agent listens on a privileged vsock port (≤ 1023),
// which only guest root can bind, so whoever answers is guest root. The
// agent opens with Magic and a CHALLENGE; the host reads them with
// ReadMagic and ReadChallenge. Magic's first byte is NUL, which no
// sd_notify message can hold, so the two are never confused.
//
// # Wire format
//
// After the agent's Magic, both sides exchange frames:
//
//	type    1 byte     TypeChallenge … TypeManifest
//	length  4 bytes    big-endian payload length, at most the type's limit
//	payload length bytes
//
// A reader checks the type and the length against the type's limit before
// allocating anything, so a 4 GiB length costs nothing, and it allocates in
// step with the bytes that actually arrive, so a large claim backed by a few
// bytes costs little. Integers are big-endian; str8 and str16 are a 1- or
// 2-byte length followed by that many bytes. Payloads, in order:
//
//	CHALLENGE    u16 version (2) | 32-byte random challenge (not all zero) |
//	(agent→host) u64 generation | str8 boot ID (≤ 64, printable ASCII) |
//	             str8 agent version (≤ 128, printable ASCII)
//	MANIFEST     the manifest envelope (package manifest), signed over the VM
//	(host→agent) name, the challenge, the generation and every entry
//	CREDENTIALS  u32 count (≤ 4096), then per credential:
//	(host→agent)   str8 name (systemd's rules, unique) | u32 value length | value
//	ERROR        u16 code (≠ 0) | str16 text (≤ 1024, UTF-8, no control characters)
//	(either)
//	REPORT       u8 outcome (1 ready, 2 failed) | str16 summary (≤ 1024, text) |
//	(agent→host) str8 agent version | u64 generation |
//	             5 × u32 milliseconds (read, verify, fetch, write, total) |
//	             u32 count (≤ 4096), then per credential: str8 name | u64 size |
//	             u8 n (≤ 32) + n bytes of the value's SHA-256 prefix | str8 delivery |
//	             str8 verification (both ≤ 32 of [a-z0-9_-]) | str16 error (≤ 256, text)
//	ACK          the status text itself (≤ 1024, text)
//	(host→agent)
//
// Every message has exactly one encoding: decoders refuse trailing bytes,
// bad lengths, unknown outcomes, duplicate credential names, and so on, so
// decoding and re-encoding gives back the same bytes.
//
// A session: the agent sends Magic and CHALLENGE (or ERROR with
// CodeUnavailable while another session holds it: one session at a time);
// the host sends MANIFEST and CREDENTIALS; the agent verifies all of it,
// writes its credstore all or nothing and sends REPORT (or ERROR when the
// host broke the protocol); the host sends ACK. Deadlines are the caller's
// job: it holds the net.Conn.
//
// It is OS-free: host and guest packages may import it.
package channel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Magic is the first thing the agent writes. It starts with NUL, which no
// sd_notify message may contain, and names the protocol and its version.
const Magic = "\x00VMCRED/2\n"

// Type is a frame's message type.
type Type uint8

// Message types.
const (
	TypeChallenge   Type = 1 // agent→host: version, challenge, generation, boot ID
	TypeCredentials Type = 2 // host→agent: the channel credentials
	TypeError       Type = 3 // either way: a refusal with a code and text
	TypeReport      Type = 4 // agent→host: the readiness report
	TypeAck         Type = 5 // host→agent: the report arrived
	TypeManifest    Type = 6 // host→agent: the signed manifest envelope
)

// Per-type payload limits. CREDENTIALS is large because channel secrets
// are not bound by systemd's 1 MiB (a 16 MiB secret must fit); the others
// are small. MaxReportSize is large enough for the largest valid Report
// (MaxReportEntries entries with every field at its limit, about 2.6 MB).
const (
	MaxFrame           = 64 << 20 // the largest payload of any type
	MaxChallengeSize   = 4 << 10
	MaxManifestSize    = 2 << 20 // MaxEntries entries of ≤ 299 bytes, a header and a signature
	MaxCredentialsSize = MaxFrame
	MaxErrorSize       = 4 << 10
	MaxReportSize      = 4 << 20
	MaxAckSize         = 4 << 10
)

const headerSize = 5

// String returns the message name in lower case ("challenge"), or "type 0xNN"
// for an unknown type.
func (t Type) String() string {
	switch t {
	case TypeChallenge:
		return "challenge"
	case TypeManifest:
		return "manifest"
	case TypeCredentials:
		return "credentials"
	case TypeError:
		return "error"
	case TypeReport:
		return "report"
	case TypeAck:
		return "ack"
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

func (t Type) known() bool { return t.Limit() > 0 }

// Limit is the largest payload a frame of type t may carry, or 0 for an
// unknown type.
func (t Type) Limit() int {
	switch t {
	case TypeChallenge:
		return MaxChallengeSize
	case TypeManifest:
		return MaxManifestSize
	case TypeCredentials:
		return MaxCredentialsSize
	case TypeError:
		return MaxErrorSize
	case TypeReport:
		return MaxReportSize
	case TypeAck:
		return MaxAckSize
	}
	return 0
}

// Errors. Each is wrapped with what was being read or written; errors.Is
// finds them.
var (
	// ErrBadMagic: the stream did not start with Magic.
	ErrBadMagic = errors.New("not a vmcred channel stream")
	// ErrFrameTooLarge: a frame's length is over its type's limit.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrUnknownType: a frame's type is not one this version knows.
	ErrUnknownType = errors.New("unknown frame type")
	// ErrUnexpectedType: a frame of a known type arrived where another was
	// due.
	ErrUnexpectedType = errors.New("unexpected frame type")
	// ErrMalformed: a payload does not decode, or a message to encode
	// breaks a rule (a bad name, a wrong token length, …).
	ErrMalformed = errors.New("malformed message")
	// ErrUnsupportedVersion: a CHALLENGE has a protocol version this side
	// does not speak.
	ErrUnsupportedVersion = errors.New("unsupported protocol version")
	// ErrRemote is wrapped by *RemoteError: the peer sent ERROR.
	ErrRemote = errors.New("peer refused")
)

// ReadMagic reads len(Magic) bytes from r and fails with ErrBadMagic unless
// they are Magic: the host's first read on a connection it dialed.
func ReadMagic(r io.Reader) error {
	var b [len(Magic)]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("read magic: %w", err)
	}
	if string(b[:]) != Magic {
		return fmt.Errorf("read magic: %w", ErrBadMagic)
	}
	return nil
}

// Conn speaks the protocol over a byte stream. It is not safe for
// concurrent use; a conversation is a strict alternation anyway.
type Conn struct {
	r         io.Reader
	w         io.Writer
	sendMagic bool
}

// NewAgent returns the agent's end. Magic is written in front of the first
// frame, in the same Write.
func NewAgent(rw io.ReadWriter) *Conn {
	return &Conn{r: rw, w: rw, sendMagic: true}
}

// NewHost returns the host's end of a stream whose Magic has been read
// already (by ReadMagic). A caller that read more than Magic (with a
// bufio.Reader, say) passes a ReadWriter that reads from that reader:
// struct{ io.Reader; io.Writer }{br, conn}.
func NewHost(rw io.ReadWriter) *Conn {
	return &Conn{r: rw, w: rw}
}

// WriteFrame writes one frame. It fails with ErrFrameTooLarge, writing
// nothing, if payload is over t's limit.
func (c *Conn) WriteFrame(t Type, payload []byte) error {
	if err := checkOut(t, len(payload)); err != nil {
		return err
	}
	e := c.frame(t, len(payload))
	e.bytes(payload)
	e.flush()
	if e.err != nil {
		return fmt.Errorf("write %s frame: %w", t, e.err)
	}
	return nil
}

func checkOut(t Type, n int) error {
	if !t.known() {
		return fmt.Errorf("write %s frame: %w", t, ErrUnknownType)
	}
	if n > t.Limit() {
		return fmt.Errorf("write %s frame: payload of %d bytes, over the %d-byte limit: %w", t, n, t.Limit(), ErrFrameTooLarge)
	}
	return nil
}

// frame starts an encoder that writes to c, holding Magic (first time, on
// the client) and the header of a frame of type t and length n.
func (c *Conn) frame(t Type, n int) *encoder {
	e := &encoder{w: c.w, buf: make([]byte, 0, min(len(Magic)+headerSize+n, directWrite+len(Magic)+headerSize))}
	if c.sendMagic {
		e.buf = append(e.buf, Magic...)
		c.sendMagic = false
	}
	e.u8(uint8(t))
	e.u32(uint32(n))
	return e
}

// ReadFrame reads one frame and returns its type and payload. With want
// given, a frame of another type fails with ErrUnexpectedType (naming both)
// before its payload is read. A frame of an unknown type fails with
// ErrUnknownType, and one over its type's limit with ErrFrameTooLarge, both
// before anything is allocated for the payload. A stream that ends cleanly
// before a frame's first byte gives an error wrapping io.EOF; one that ends
// inside a frame, io.ErrUnexpectedEOF.
func (c *Conn) ReadFrame(want ...Type) (Type, []byte, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(c.r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("read frame header: %w", err)
	}
	t, n := Type(h[0]), binary.BigEndian.Uint32(h[1:])
	if !t.known() {
		return t, nil, fmt.Errorf("read frame: %s: %w", t, ErrUnknownType)
	}
	if len(want) > 0 && !slices.Contains(want, t) {
		return t, nil, fmt.Errorf("read frame: got %s, want %s: %w", t, typeList(want), ErrUnexpectedType)
	}
	if uint64(n) > uint64(t.Limit()) {
		return t, nil, fmt.Errorf("read %s frame: length %d, over the %d-byte limit: %w", t, n, t.Limit(), ErrFrameTooLarge)
	}
	p, err := readPayload(c.r, int(n))
	if err != nil {
		return t, nil, fmt.Errorf("read %s frame: payload of %d bytes: %w", t, n, err)
	}
	return t, p, nil
}

func typeList(ts []Type) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, " or ")
}

// firstChunk is the most readPayload allocates before any payload byte has
// arrived. Each time its buffer fills it moves to one four times larger,
// sized so that the last step lands exactly on n: memory stays within
// four times the bytes received, not the length claimed. A 16 MiB payload
// costs about 21 MiB of allocation and 5 MiB of copying in all (doubling,
// and jumping to n only within a factor of four, cost 32 MiB and 16 MiB:
// BENCHMARKS.md).
const firstChunk = 64 << 10

// growth is the factor between readPayload's successive buffers.
const growth = 4

// readPayload reads exactly n bytes. Buffers it outgrows are wiped, since
// a payload may hold secrets.
func readPayload(r io.Reader, n int) ([]byte, error) {
	// The sizes are ⌈n/growth^k⌉, …, ⌈n/growth⌉, n, the first of them at
	// most firstChunk; each is at most growth times the one before.
	div := 1
	for (n+div-1)/div > firstChunk {
		div *= growth
	}
	size := (n + div - 1) / div
	b := make([]byte, 0, size)
	for len(b) < n {
		if len(b) == size {
			div /= growth
			size = (n + div - 1) / div
			nb := make([]byte, len(b), size)
			copy(nb, b)
			clear(b)
			b = nb
		}
		m, err := io.ReadFull(r, b[len(b):size])
		b = b[:len(b)+m]
		if err != nil {
			clear(b)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return b[:n:n], nil
}
