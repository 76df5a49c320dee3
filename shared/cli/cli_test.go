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
		{args: []string{"--help"}, code: 0, stdout: "echo   say it"},
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

// helpCommands are commands whose flags exercise every placeholder rule.
func helpCommands(ran *[]string) []Command {
	return []Command{
		{Name: "pack", Summary: "pack it", Run: func(ctx context.Context, env *Env, args []string) error {
			fs := NewFlagSet("pack")
			fs.String("vm", "", "the VM's `NAME`")
			fs.String("mode", "verified", "the `MODE`: verified or systemd")
			fs.String("plain", "", "a string flag without a placeholder")
			fs.StringArray("trust", nil, "a repeatable flag")
			fs.StringSlice("paths", nil, "comma-separated")
			fs.Int("reserve", -1, "`BYTES` left (default 2048; 0 for dmi)")
			fs.Duration("timeout", 0, "give up after `DURATION`")
			fs.Bool("json", false, "print JSON")
			opt := fs.VarPF(&optional{}, "from", "", "all, or only the `NAMES` given")
			opt.NoOptDefVal = ":all"
			if err := Parse(env, fs, "prog pack [flags]", args); err != nil {
				return err
			}
			env.Log.Info("info line")
			env.Log.Warn("warn line")
			*ran = append(*ran, "pack")
			return nil
		}},
		{Name: "keygen", Summary: "make a key", Run: func(ctx context.Context, env *Env, args []string) error {
			if err := Parse(env, NewFlagSet("keygen"), "prog keygen", args); err != nil {
				return err
			}
			return errors.New("keygen: keygen: out exists")
		}},
	}
}

type optional struct{ v string }

func (o *optional) String() string     { return o.v }
func (o *optional) Set(s string) error { o.v = s; return nil }
func (o *optional) Type() string       { return "" }

func TestHelp(t *testing.T) {
	var ran []string
	env, out, _ := testEnv()
	if code := Main(context.Background(), "prog", helpCommands(&ran), []string{"help", "pack"}, env); code != 0 {
		t.Fatalf("help pack: exit %d", code)
	}
	got := out.String()
	env2, out2, _ := testEnv()
	Main(context.Background(), "prog", helpCommands(&ran), []string{"pack", "--help"}, env2)
	if out2.String() != got {
		t.Errorf("help pack and pack --help differ:\n%s\n---\n%s", got, out2.String())
	}
	if len(ran) != 0 {
		t.Errorf("help ran the command: %v", ran)
	}
	for _, want := range []string{
		"Usage: prog pack [flags]\n\nFlags:\n",
		"--vm NAME ", "--mode MODE ", "(default verified)", "--plain VALUE ", "--trust VALUE ",
		"--paths VALUE ", "--reserve BYTES ", "--timeout DURATION ", "--json ", "--from[=NAMES] ",
		"\nCommon flags:\n", "-q, --quiet", "--log-level LEVEL", "-h, --help",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("help lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"(default -1)", "stringArray", "strings", "--plain string", "[=true|false]", ":all", "(default \"", "prog COMMAND"} {
		if strings.Contains(got, bad) {
			t.Errorf("help holds %q:\n%s", bad, got)
		}
	}
	if n := strings.Count(got, "(default"); n != 3 {
		t.Errorf("%d defaults shown, want 3 (mode, reserve's own, log-level):\n%s", n, got)
	}
	for _, line := range strings.Split(got, "\n") {
		if len(line) > helpWidth {
			t.Errorf("line of %d columns: %q", len(line), line)
		}
	}
}

func TestMainErrors(t *testing.T) {
	var ran []string
	tests := []struct {
		args   []string
		code   int
		stderr string
		not    string
	}{
		{[]string{"--bogus"}, 2, `unknown flag "--bogus"`, "unknown command"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`, ""},
		{[]string{"help", "bogus"}, 2, `unknown command "bogus"`, ""},
		{[]string{"help", "pack", "keygen"}, 2, "help takes one command name", ""},
		{[]string{"pack", "--bogus"}, 2, "pack: unknown flag: --bogus (see --help)", "pack: pack:"},
		{[]string{"keygen"}, 1, "keygen: out exists", "keygen: keygen:"},
		{[]string{"pack", "--log-level", "loud"}, 2, `unknown log level "loud"`, ""},
		{[]string{"pack", "-q", "--log-level", "info"}, 2, "give one of them", ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args), func(t *testing.T) {
			env, _, errb := testEnv()
			if code := Main(context.Background(), "prog", helpCommands(&ran), tt.args, env); code != tt.code {
				t.Errorf("exit %d, want %d: %s", code, tt.code, errb.String())
			}
			if !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("stderr %q lacks %q", errb.String(), tt.stderr)
			}
			if tt.not != "" && strings.Contains(errb.String(), tt.not) {
				t.Errorf("stderr %q holds %q", errb.String(), tt.not)
			}
		})
	}
}

func TestLogLevel(t *testing.T) {
	tests := []struct {
		args      []string
		info, wrn bool
	}{
		{nil, true, true},
		{[]string{"--quiet"}, false, true},
		{[]string{"-q"}, false, true},
		{[]string{"--log-level", "error"}, false, false},
		{[]string{"--log-level=warn"}, false, true},
		{[]string{"--log-level", "debug"}, true, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args), func(t *testing.T) {
			var ran []string
			env, _, errb := testEnv()
			if code := Main(context.Background(), "prog", helpCommands(&ran), append([]string{"pack"}, tt.args...), env); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			if got := strings.Contains(errb.String(), "info line"); got != tt.info {
				t.Errorf("info line written: %v, want %v", got, tt.info)
			}
			if got := strings.Contains(errb.String(), "warn line"); got != tt.wrn {
				t.Errorf("warn line written: %v, want %v", got, tt.wrn)
			}
		})
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int]string{0: "0 credentials", 1: "1 credential", 2: "2 credentials"} {
		if got := Count(n, "credential"); got != want {
			t.Errorf("Count(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestCommonFlagsYield: a command that defines -q or --help itself keeps
// them; Parse adds only what is free.
func TestCommonFlagsYield(t *testing.T) {
	env, out, _ := testEnv()
	fs := NewFlagSet("x")
	q := fs.BoolP("query", "q", false, "the command's own -q")
	if err := Parse(env, fs, "prog x", []string{"-q"}); err != nil {
		t.Fatal(err)
	}
	if !*q {
		t.Error("-q did not reach the command's own flag")
	}
	if err := Parse(env, NewFlagSet("y"), "prog y", []string{"--help"}); CodeOf(err) != 0 || !strings.Contains(out.String(), "--quiet") {
		t.Errorf("help: %v %q", err, out.String())
	}
}
