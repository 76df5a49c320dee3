package logging

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zapcore"
)

func TestJournaldLines(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Config{Journald: true, Level: zapcore.DebugLevel, Name: "vmcred-guest"})
	l.Debug("d")
	l.Info("loaded", Int("count", 3))
	l.Warn("w")
	l.Error("e", String("credential", "api-key"))
	want := []string{
		`<7> d`,
		`<6> loaded {"count": 3}`,
		`<4> w`,
		`<3> e {"credential": "api-key"}`,
	}
	got := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
}

func TestCLILines(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Config{Level: zapcore.InfoLevel, Name: "vmcred-host"})
	l.Debug("hidden")
	l.Warn("file skipped", String("path", "/x"))
	want := "warn: vmcred-host file skipped {\"path\": \"/x\"}\n"
	if got := buf.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestFields: every field constructor, With, and a Stringer that is
// called only for lines that are written.
func TestFields(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Config{Level: zapcore.InfoLevel, Name: "vmcred-host"}).With(String("vm", "web"))
	calls := 0
	s := countingStringer{addr: &net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, calls: &calls}
	l.Debug("hidden", Stringer("peer", s))
	if calls != 0 {
		t.Errorf("String() called %d times for a line below the level", calls)
	}
	l.Info("sent", Strings("credentials", []string{"a", "b c"}), Bool("ready", true), Bool("late", false), Int("bytes", -5), Stringer("peer", s))
	want := `info: vmcred-host sent {"vm": "web", "credentials": ["a", "b c"], "ready": true, "late": false, "bytes": -5, "peer": "/run/x.sock"}` + "\n"
	if got := buf.String(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

type countingStringer struct {
	addr  net.Addr
	calls *int
}

func (c countingStringer) String() string { *c.calls++; return c.addr.String() }

// TestNilLogger: a nil logger discards everything without panicking.
func TestNilLogger(t *testing.T) {
	var l *Logger
	l.Info("x", String("k", "v"))
	l.With(Int("n", 1)).Error("y")
	if err := l.Sync(); err != nil {
		t.Errorf("Sync on nil: %v", err)
	}
}
