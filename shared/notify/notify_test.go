package notify

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Message
	}{
		{"empty", "", Message{}},
		{"pid1 ready", "READY=1\nSTATUS=Ready.", Message{Fields: []Field{{"READY", "1"}, {"STATUS", "Ready."}}}},
		{"trailing newline", "READY=1\n", Message{Fields: []Field{{"READY", "1"}}}},
		{"crlf and blank lines", "\r\nREADY=1\r\n\r\nSTATUS=a b\r", Message{Fields: []Field{{"READY", "1"}, {"STATUS", "a b"}}}},
		{"cr only", "A=1\rB=2", Message{Fields: []Field{{"A", "1"}, {"B", "2"}}}},
		{"unit active", "X_SYSTEMD_UNIT_ACTIVE=multi-user.target", Message{Fields: []Field{{KeyUnitActive, "multi-user.target"}}}},
		{"shutdown", "EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff\nX_SYSTEMD_REBOOT_PARAMETER=a=b",
			Message{Fields: []Field{{KeyExitStatus, "0"}, {KeyShutdown, "poweroff"}, {KeyRebootParameter, "a=b"}}}},
		{"empty value", "STATUS=", Message{Fields: []Field{{"STATUS", ""}}}},
		{"no trimming", " STATUS=x\nSTATUS= y ", Message{Fields: []Field{{"STATUS", " y "}}, Ignored: 1}},
		{"ignored lines", "garbage\n=x\nlower=1\nREADY=1\nA-B=2", Message{Fields: []Field{{"READY", "1"}}, Ignored: 4}},
		{"duplicates kept", "STATUS=a\nSTATUS=b", Message{Fields: []Field{{"STATUS", "a"}, {"STATUS", "b"}}}},
		{"non-utf8 value", "STATUS=\xff\xfe", Message{Fields: []Field{{"STATUS", "\xff\xfe"}}}},
		{"exactly max", "STATUS=" + strings.Repeat("x", MaxSize-7), Message{Fields: []Field{{"STATUS", strings.Repeat("x", MaxSize-7)}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"over max", "STATUS=" + strings.Repeat("x", MaxSize-6), ErrTooLarge},
		{"nul", "READY=1\x00", ErrNUL},
		{"nul in middle", "READY=1\nSTATUS=a\x00b", ErrNUL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHelpers(t *testing.T) {
	tests := []struct {
		in         string
		ready      bool
		status     string
		hasStatus  bool
		exit       uint8
		hasExit    bool
		unitActive string
	}{
		{in: "READY=1\nSTATUS=Ready.", ready: true, status: "Ready.", hasStatus: true},
		{in: "READY=0"},
		{in: "READY=yes"},
		{in: "READY=1 "},
		{in: "STATUS=first\nSTATUS=second\nREADY=2\nREADY=1", ready: true, status: "first", hasStatus: true},
		{in: "EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff", hasExit: true},
		{in: "EXIT_STATUS=255", exit: 255, hasExit: true},
		{in: "EXIT_STATUS=256"},
		{in: "EXIT_STATUS=01"},
		{in: "EXIT_STATUS=-1"},
		{in: "EXIT_STATUS="},
		{in: "X_SYSTEMD_UNIT_ACTIVE=basic.target", unitActive: "basic.target"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Ready(); got != tt.ready {
				t.Errorf("Ready() = %v, want %v", got, tt.ready)
			}
			if s, ok := m.Status(); s != tt.status || ok != tt.hasStatus {
				t.Errorf("Status() = %q, %v; want %q, %v", s, ok, tt.status, tt.hasStatus)
			}
			if e, ok := m.ExitStatus(); e != tt.exit || ok != tt.hasExit {
				t.Errorf("ExitStatus() = %d, %v; want %d, %v", e, ok, tt.exit, tt.hasExit)
			}
			if u, _ := m.Get(KeyUnitActive); u != tt.unitActive {
				t.Errorf("Get(%s) = %q, want %q", KeyUnitActive, u, tt.unitActive)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		name   string
		fields []Field
		want   string
	}{
		{"pid1 ready", []Field{{KeyReady, "1"}, {KeyStatus, "Ready."}}, "READY=1\nSTATUS=Ready."},
		{"one", []Field{{KeyStatus, "VM running: 3 credentials"}}, "STATUS=VM running: 3 credentials"},
		{"empty value", []Field{{KeyStatus, ""}}, "STATUS="},
		{"equals in value", []Field{{"X_VMCRED_NOTE", "a=b"}}, "X_VMCRED_NOTE=a=b"},
		{"exactly max", []Field{{KeyStatus, strings.Repeat("x", MaxSize-7)}}, "STATUS=" + strings.Repeat("x", MaxSize-7)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Format(tt.fields...)
			if err != nil {
				t.Fatalf("Format: %v", err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Format (-want +got):\n%s", diff)
			}
			m, err := Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(Message{Fields: tt.fields}, m); diff != "" {
				t.Errorf("Parse(Format()) (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFormatErrors(t *testing.T) {
	tests := []struct {
		name   string
		fields []Field
		want   error
	}{
		{"none", nil, ErrEmpty},
		{"empty key", []Field{{"", "1"}}, ErrInvalidField},
		{"lower key", []Field{{"ready", "1"}}, ErrInvalidField},
		{"key with =", []Field{{"A=B", "1"}}, ErrInvalidField},
		{"key with newline", []Field{{"A\nB", "1"}}, ErrInvalidField},
		{"newline in value", []Field{{KeyStatus, "a\nb"}}, ErrInvalidField},
		{"cr in value", []Field{{KeyStatus, "a\rb"}}, ErrInvalidField},
		{"nul in value", []Field{{KeyStatus, "a\x00b"}}, ErrInvalidField},
		{"over max", []Field{{KeyStatus, strings.Repeat("x", MaxSize-6)}}, ErrTooLarge},
		{"over max with separators", []Field{{KeyReady, "1"}, {KeyStatus, strings.Repeat("x", MaxSize-14)}}, ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Format(tt.fields...)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Format = %q, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestReadMessage(t *testing.T) {
	m, err := ReadMessage(iotest.OneByteReader(strings.NewReader("READY=1\nSTATUS=Ready.")))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Message{Fields: []Field{{"READY", "1"}, {"STATUS", "Ready."}}}, m); diff != "" {
		t.Errorf("ReadMessage (-want +got):\n%s", diff)
	}

	// A peer that never stops: ReadMessage stops after MaxSize+1 bytes.
	r := &countingReader{r: iotest.OneByteReader(infinite{})}
	if _, err := ReadMessage(r); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadMessage(endless) error = %v, want ErrTooLarge", err)
	}
	if r.n != MaxSize+1 {
		t.Errorf("ReadMessage read %d bytes, want %d", r.n, MaxSize+1)
	}

	boom := errors.New("boom")
	if _, err := ReadMessage(iotest.ErrReader(boom)); !errors.Is(err, boom) {
		t.Errorf("ReadMessage(failing reader) error = %v, want it to wrap the cause", err)
	}
}

type infinite struct{}

func (infinite) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'A'
	}
	return len(p), nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"READY=1\nSTATUS=Ready.", "X_SYSTEMD_UNIT_ACTIVE=multi-user.target", "EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff",
		"\r\n=\nx", "READY=1\x00", "A=B=C\rD=",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			if len(b) <= MaxSize && bytes.IndexByte(b, 0) < 0 {
				t.Fatalf("Parse refused a message PID 1 accepts: %v", err)
			}
			return
		}
		if len(m.Fields) == 0 {
			return
		}
		out, err := Format(m.Fields...)
		if err != nil {
			t.Fatalf("Format(Parse(b)) failed: %v", err)
		}
		if len(out) > len(b) {
			t.Fatalf("Format(Parse(b)) is %d bytes, longer than the %d-byte input", len(out), len(b))
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Format(Parse(b))) failed: %v", err)
		}
		if diff := cmp.Diff(Message{Fields: m.Fields}, again); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s", diff)
		}
	})
}
