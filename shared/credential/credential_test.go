package credential

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestValidateName(t *testing.T) {
	valid := []string{"a", "api-key", "a b", "k=v", "*", "?", "[x]", "~", "@x", "systemd.unit-dropin.x~30-named.service", "...", ".hidden", strings.Repeat("n", 255), "\x20", "\x7e"}
	for _, n := range valid {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	invalid := []string{"", ".", "..", "a/b", "/", "a:b", ":", strings.Repeat("n", 256), "a\x00b", "a\nb", "\x1f", "\x7f", "caf\xc3\xa9", "\xff"}
	for _, n := range invalid {
		err := ValidateName(n)
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want an error", n)
			continue
		}
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v does not wrap ErrInvalidName", n, err)
		}
		if len(err.Error()) > 200 {
			t.Errorf("ValidateName(%d-byte name) error is %d bytes; long names must be cut", len(n), len(err.Error()))
		}
	}
}

const canary = "hunter2-canary-value"

func TestSecretRedactedEverywhere(t *testing.T) {
	s := NewSecret([]byte(canary))
	type wrapper struct {
		Token Secret
		Name  string
	}
	w := wrapper{Token: s, Name: "api-key"}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10s", "%-8v", "%T"} {
		outs = append(outs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, w), fmt.Sprintf(verb, &w))
	}
	outs = append(outs, s.String(), s.GoString(), fmt.Sprint(s), fmt.Sprintln(s), fmt.Sprint([]Secret{s}), fmt.Sprint(map[string]Secret{"k": s}))
	j, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	outs = append(outs, string(j))
	txt, _ := s.MarshalText()
	outs = append(outs, string(txt))

	var buf bytes.Buffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.DebugLevel))
	log.Info("msg", zap.Any("any", s), zap.Stringer("stringer", s), zap.Reflect("reflect", w), zap.Any("struct", w))
	log.Sugar().Infow("sugar", "s", s)
	log.Sugar().Infof("sugarf %v %s %q %x", s, s, s, s)
	enc2 := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	zap.New(zapcore.NewCore(enc2, zapcore.AddSync(&buf), zapcore.DebugLevel)).Info("console", zap.Any("any", s))
	outs = append(outs, buf.String())

	for i, o := range outs {
		if strings.Contains(o, canary) || strings.Contains(o, fmt.Sprintf("%x", canary)) {
			t.Errorf("output %d leaks the value", i)
		}
	}
	var back struct{ Token string }
	if err := json.Unmarshal(j, &back); err != nil || back.Token != Redacted {
		t.Errorf("JSON form = %s, want the token as %q", j, Redacted)
	}
	if fmt.Sprintf("%v", s) != Redacted || !strings.Contains(buf.String(), Redacted) {
		t.Errorf("redaction marker missing")
	}
}

func TestSecretAccessors(t *testing.T) {
	s := NewSecret([]byte(canary))
	if string(s.Reveal()) != canary || s.Len() != len(canary) {
		t.Fatal("Reveal/Len wrong")
	}
	if !s.Equal(NewSecret([]byte(canary))) || s.Equal(NewSecret([]byte("other"))) {
		t.Fatal("Equal wrong")
	}
	s.Wipe()
	if bytes.Contains(s.Reveal(), []byte("hunter")) {
		t.Fatal("Wipe left the value")
	}
	var zero Secret
	if zero.Len() != 0 || zero.String() != Redacted {
		t.Fatal("zero Secret wrong")
	}
}
