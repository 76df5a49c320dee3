// Package clitest holds the checks every vmcred binary's tests run on its
// help: the text of "help" and of every command's --help, checked for the
// rules package cli's Help follows, ready for the caller to compare with
// golden files. It iterates over the binary's commands, so a new command
// is covered as soon as it is added. It reads and writes no file (shared
// packages are OS-free): the caller holds the golden files.
package clitest

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
)

// helpWidth is the width cli.Help wraps to.
const helpWidth = 80

// typePlaceholder finds a flag whose usage names no placeholder (the
// generic VALUE cli.Help falls back to): every flag should say what it
// takes.
var typePlaceholder = regexp.MustCompile(`--[a-z0-9-]+(\[=| )VALUE\b`)

// HelpTexts runs prog's "help" and "help CMD" for every command in cmds
// and returns each text by golden file name: "overview.txt" and
// "CMD.txt". It checks that each exits 0 and writes nothing to stderr;
// that CMD --help prints the same as help CMD; that no line is wider than
// 80 columns; and that every flag names its placeholder.
func HelpTexts(t *testing.T, prog string, cmds []cli.Command) map[string][]byte {
	t.Helper()
	texts := map[string][]byte{}
	run := func(args ...string) []byte {
		t.Helper()
		var out, errb bytes.Buffer
		env := &cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Version: "test",
			Log: logging.New(&errb, logging.Config{Name: prog})}
		if code := cli.Main(context.Background(), prog, cmds, args, env); code != 0 || errb.Len() > 0 {
			t.Errorf("%s %s: exit %d, stderr %q", prog, strings.Join(args, " "), code, errb.String())
		}
		return out.Bytes()
	}
	check := func(file string, text []byte) {
		t.Helper()
		for i, line := range strings.Split(string(text), "\n") {
			if len(line) > helpWidth {
				t.Errorf("%s line %d is %d columns wide: %q", file, i+1, len(line), line)
			}
		}
		if m := typePlaceholder.Find(text); m != nil {
			t.Errorf("%s: %q names no placeholder: put one in back quotes in its usage", file, m)
		}
		texts[file] = text
	}
	check("overview.txt", run("help"))
	for _, c := range cmds {
		text := run("help", c.Name)
		if again := run(c.Name, "--help"); !bytes.Equal(again, text) {
			t.Errorf("%s %s --help differs from %s help %s", prog, c.Name, prog, c.Name)
		}
		check(c.Name+".txt", text)
	}
	return texts
}
