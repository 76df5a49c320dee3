package logging

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestJournaldLines(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf, Config{Journald: true, Level: zapcore.DebugLevel, Name: "vmcred-guest"})
	l.Debug("d")
	l.Info("loaded", zap.Int("count", 3))
	l.Warn("w")
	l.Error("e", zap.String("credential", "api-key"))
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
	l.Warn("file skipped", zap.String("path", "/x"))
	want := "warn: vmcred-host file skipped {\"path\": \"/x\"}\n"
	if got := buf.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
