// Package notify parses and formats sd_notify(3) messages: the text a
// service sends to $NOTIFY_SOCKET, and what a guest's PID 1 sends to the
// host through the vmm.notify_socket credential (systemd ≥ 253), e.g.
// "READY=1\nSTATUS=Ready.".
//
// The rules are those of systemd's receivers (manager_invoke_notify_message
// in src/core/manager.c, read_vsock_notify in src/vmspawn/vmspawn.c): one
// message per datagram or per stream connection (ended by EOF), at most
// NOTIFY_BUFFER_MAX (4096) bytes, no NUL byte, split into KEY=VALUE lines on
// both '\n' and '\r', unknown keys ignored.
//
// It is OS-free: host and guest packages may import it; sending and
// receiving on sockets is the caller's job.
package notify

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// MaxSize is NOTIFY_BUFFER_MAX (PIPE_BUF): PID 1 and systemd-vmspawn refuse
// a longer message.
const MaxSize = 4096

// Keys systemd sends or understands. Any other key is just as valid; these
// are here so callers do not misspell them. The X_SYSTEMD_ ones are sent by
// PID 1 from v256 on (systemd(1), "Readiness Protocol").
const (
	KeyReady           = "READY"     // "1" when start-up finished
	KeyStatus          = "STATUS"    // free text; PID 1 sends "Ready."
	KeyReloading       = "RELOADING" // "1"
	KeyStopping        = "STOPPING"  // "1"
	KeyErrno           = "ERRNO"
	KeyExitStatus      = "EXIT_STATUS" // 0–255, from systemd-shutdown just before poweroff/reboot
	KeyMainPID         = "MAINPID"
	KeyWatchdog        = "WATCHDOG"
	KeyMonotonicUsec   = "MONOTONIC_USEC"
	KeyHostname        = "X_SYSTEMD_HOSTNAME"
	KeyMachineID       = "X_SYSTEMD_MACHINE_ID"
	KeySignalsLevel    = "X_SYSTEMD_SIGNALS_LEVEL"
	KeyUnitActive      = "X_SYSTEMD_UNIT_ACTIVE"   // a target unit that started
	KeyUnitInactive    = "X_SYSTEMD_UNIT_INACTIVE" // a target unit that stopped
	KeyShutdown        = "X_SYSTEMD_SHUTDOWN"      // reboot, halt, poweroff or kexec
	KeyRebootParameter = "X_SYSTEMD_REBOOT_PARAMETER"
)

// Errors wrapped by Parse, ReadMessage and Format.
var (
	// ErrTooLarge: the message is over MaxSize bytes.
	ErrTooLarge = errors.New("notify message too large")
	// ErrNUL: the message holds a NUL byte, which PID 1 refuses.
	ErrNUL = errors.New("notify message has a NUL byte")
	// ErrInvalidField: Format was given a key or value it cannot send.
	ErrInvalidField = errors.New("invalid notify field")
	// ErrEmpty: Format was given no fields.
	ErrEmpty = errors.New("empty notify message")
)

// Field is one KEY=VALUE line.
type Field struct {
	Key   string
	Value string
}

// String returns "KEY=VALUE".
func (f Field) String() string { return f.Key + "=" + f.Value }

// Message is a parsed notify message.
type Message struct {
	// Fields are the KEY=VALUE lines in the order they arrived, duplicates
	// included.
	Fields []Field
	// Ignored counts non-empty lines that were not KEY=VALUE with a valid
	// key (see ValidKey): systemd ignores them too, but a count lets the
	// receiver log that something odd arrived.
	Ignored int
}

// Get returns the value of the first field named key, as systemd's
// strv_find_startswith does for STATUS=.
func (m Message) Get(key string) (string, bool) {
	for _, f := range m.Fields {
		if f.Key == key {
			return f.Value, true
		}
	}
	return "", false
}

// Ready reports whether any line is exactly "READY=1" (systemd's
// strv_contains(tags, "READY=1"); "READY=yes" is not ready).
func (m Message) Ready() bool {
	for _, f := range m.Fields {
		if f.Key == KeyReady && f.Value == "1" {
			return true
		}
	}
	return false
}

// Status returns the first STATUS= value.
func (m Message) Status() (string, bool) { return m.Get(KeyStatus) }

// ExitStatus returns the first EXIT_STATUS= value if it is a decimal number
// from 0 to 255; systemd-vmspawn makes it its own exit code.
func (m Message) ExitStatus() (uint8, bool) {
	v, ok := m.Get(KeyExitStatus)
	if !ok || v == "" || (len(v) > 1 && v[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return 0, false
	}
	return uint8(n), true
}

// ValidKey reports whether key is non-empty and made only of A–Z, 0–9 and
// '_', the form of every key sd_notify(3) defines. systemd itself compares
// keys as bytes, so a key outside this set can never mean anything to it.
func ValidKey(key string) bool {
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		if !keyByte(key[i]) {
			return false
		}
	}
	return true
}

func keyByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// IsKeyByte reports whether c may appear in a key (see ValidKey). Channel
// sniffing uses it to tell notify text from other protocols.
func IsKeyByte(c byte) bool { return keyByte(c) }

// Parse parses one message. It fails only where systemd's PID 1 refuses the
// whole message: over MaxSize bytes (ErrTooLarge) or holding a NUL byte
// (ErrNUL). Otherwise it is lenient like systemd: lines are split on '\n'
// and '\r', empty lines are skipped, each line is cut at its first '=',
// nothing is trimmed or unescaped, and lines that are not KEY=VALUE with a
// valid key are counted in Ignored. An empty message parses to no fields.
func Parse(b []byte) (Message, error) {
	if len(b) > MaxSize {
		return Message{}, fmt.Errorf("notify message: %d bytes, over the %d-byte limit: %w", len(b), MaxSize, ErrTooLarge)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return Message{}, fmt.Errorf("notify message: byte %d: %w", i, ErrNUL)
	}
	var m Message
	for len(b) > 0 {
		end := bytes.IndexAny(b, "\n\r")
		line := b
		if end >= 0 {
			line, b = b[:end], b[end+1:]
		} else {
			b = nil
		}
		if len(line) == 0 {
			continue
		}
		key, value, ok := bytes.Cut(line, []byte("="))
		if !ok || !ValidKey(string(key)) {
			m.Ignored++
			continue
		}
		m.Fields = append(m.Fields, Field{Key: string(key), Value: string(value)})
	}
	return m, nil
}

// ReadMessage reads r to EOF and parses what it read, as the host must for
// a stream connection: systemd ≥ 256 half-closes its end after writing and
// waits for EOF from the host, so the host reads to EOF and then closes at
// once. It reads at most MaxSize+1 bytes, and fails with ErrTooLarge if
// there are more, without reading the rest. Deadlines are the caller's: set
// one on the connection first.
func ReadMessage(r io.Reader) (Message, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return Message{}, fmt.Errorf("read notify message: %w", err)
	}
	return Parse(b)
}

// Format builds a message from fields, in order, joined by '\n' with no
// trailing newline, exactly as systemd writes "READY=1\nSTATUS=Ready.".
// Every key must satisfy ValidKey; a value may hold anything but '\n',
// '\r' (receivers split lines on both) and NUL; the whole must fit in
// MaxSize bytes.
func Format(fields ...Field) ([]byte, error) {
	if len(fields) == 0 {
		return nil, fmt.Errorf("format notify message: %w", ErrEmpty)
	}
	n := len(fields) - 1
	for _, f := range fields {
		if !ValidKey(f.Key) {
			return nil, fmt.Errorf("format notify message: key %q is not [A-Z0-9_]+: %w", cut(f.Key), ErrInvalidField)
		}
		if i := strings.IndexAny(f.Value, "\n\r\x00"); i >= 0 {
			return nil, fmt.Errorf("format notify message: value of %s has byte 0x%02x at offset %d: %w", f.Key, f.Value[i], i, ErrInvalidField)
		}
		n += len(f.Key) + 1 + len(f.Value)
	}
	if n > MaxSize {
		return nil, fmt.Errorf("format notify message: %d bytes, over the %d-byte limit: %w", n, MaxSize, ErrTooLarge)
	}
	b := make([]byte, 0, n)
	for i, f := range fields {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, f.Key...)
		b = append(b, '=')
		b = append(b, f.Value...)
	}
	return b, nil
}

// cut shortens s for an error message.
func cut(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
