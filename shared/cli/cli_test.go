package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/shared/logging"
	"go.uber.org/zap/zapcore"
)

func testEnv() (*Env, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(zapcore.EncoderConfig{MessageKey: "m"}), zapcore.AddSync(&errb), zapcore.DebugLevel)
	return &Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Log: logging.NewCore(core), Version: "v1.2.3"}, &out, &errb
}

func TestMain(t *testing.T) {
	var gotFlag string
	cmds := []Command{
		{Name: "echo", Summary: "say it", Run: func(ctx context.Context, env *Env, args []string) error {
			fs := NewFlagSet("echo")
			s := fs.String("say", "", "what to say")
			if err := Parse(env, fs, "prog echo [--say S]", args); err != nil {
				return err
			}
			gotFlag = *s
			return nil
		}},
		{Name: "fail", Run: func(context.Context, *Env, []string) error { return WithCode(ExitIO, errors.New("read /x: denied")) }},
		{Name: "plain", Run: func(context.Context, *Env, []string) error { return errors.New("bad") }},
	}
	tests := []struct {
		args    []string
		code    int
		stdout  string
		stderr  string
		flagVal string
	}{
		{args: nil, code: 2, stderr: "Usage: prog COMMAND"},
		{args: []string{"--help"}, code: 0, stdout: "echo     say it"},
		{args: []string{"--version"}, code: 0, stdout: "prog v1.2.3"},
		{args: []string{"nope"}, code: 2, stderr: `unknown command "nope"`},
		{args: []string{"echo", "--say", "hi"}, code: 0, flagVal: "hi"},
		{args: []string{"echo", "--help"}, code: 0, stdout: "Usage: prog echo [--say S]"},
		{args: []string{"echo", "--bogus"}, code: 2, stderr: "unknown flag: --bogus"},
		{args: []string{"fail"}, code: 3, stderr: "fail: read /x: denied"},
		{args: []string{"plain"}, code: 1, stderr: "plain: bad"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args), func(t *testing.T) {
			env, out, errb := testEnv()
			gotFlag = ""
			code := Main(context.Background(), "prog", cmds, tt.args, env)
			if code != tt.code {
				t.Errorf("code = %d, want %d (stderr %q)", code, tt.code, errb.String())
			}
			if !strings.Contains(out.String(), tt.stdout) {
				t.Errorf("stdout %q lacks %q", out.String(), tt.stdout)
			}
			if !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("stderr %q lacks %q", errb.String(), tt.stderr)
			}
			if gotFlag != tt.flagVal {
				t.Errorf("flag = %q, want %q", gotFlag, tt.flagVal)
			}
		})
	}
}

func TestCodeOf(t *testing.T) {
	if CodeOf(nil) != 0 || CodeOf(errors.New("x")) != 1 || CodeOf(fmt.Errorf("wrap: %w", WithCode(4, errors.New("t")))) != 4 || WithCode(3, nil) != nil {
		t.Error("CodeOf/WithCode wrong")
	}
}
