// Package clitest holds the test every vmcred binary runs on its help: the
// text of "help" and of every command's --help is compared with a golden
// file, and checked for the rules package cli's Help follows. It iterates
// over the binary's commands, so a new command is covered as soon as it is
// added (its golden file is written by go test -update).
package clitest

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
)

// helpWidth is the width cli.Help wraps to.
const helpWidth = 80

// typePlaceholder finds a flag whose usage names no placeholder (the
// generic VALUE cli.Help falls back to): every flag should say what it
// takes.
var typePlaceholder = regexp.MustCompile(`--[a-z0-9-]+(\[=| )VALUE\b`)

// CheckHelp runs prog's "help" and "help CMD" for every command in cmds
// and compares each text with dir/overview.txt and dir/CMD.txt, writing
// them first when update is set. It also checks that CMD --help prints
// the same text, exits 0 and writes nothing to stderr; that no line is
// wider than 80 columns; that every flag names its placeholder; and that
// dir holds no golden file for a command that no longer exists.
func CheckHelp(t *testing.T, prog string, cmds []cli.Command, dir string, update bool) {
	t.Helper()
	want := map[string]bool{"overview.txt": true}
	check := func(file string, args ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		env := &cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Version: "test",
			Log: logging.New(&errb, logging.Config{Name: prog})}
		if code := cli.Main(context.Background(), prog, cmds, args, env); code != 0 || errb.Len() > 0 {
			t.Errorf("%s %s: exit %d, stderr %q", prog, strings.Join(args, " "), code, errb.String())
		}
		compare(t, filepath.Join(dir, file), out.Bytes(), update)
		for i, line := range strings.Split(out.String(), "\n") {
			if len(line) > helpWidth {
				t.Errorf("%s line %d is %d columns wide: %q", file, i+1, len(line), line)
			}
		}
		if m := typePlaceholder.FindString(out.String()); m != "" {
			t.Errorf("%s: %q names no placeholder: put one in back quotes in its usage", file, m)
		}
		return out.String()
	}
	check("overview.txt", "help")
	for _, c := range cmds {
		file := c.Name + ".txt"
		want[file] = true
		text := check(file, "help", c.Name)
		var out bytes.Buffer
		env := &cli.Env{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }, Version: "test"}
		if code := cli.Main(context.Background(), prog, cmds, []string{c.Name, "--help"}, env); code != 0 || out.String() != text {
			t.Errorf("%s %s --help (exit %d) differs from %s help %s", prog, c.Name, code, prog, c.Name)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !want[e.Name()] {
			t.Errorf("%s: no command %s has this golden file; remove it", filepath.Join(dir, e.Name()), strings.TrimSuffix(e.Name(), ".txt"))
		}
	}
}

func compare(t *testing.T, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s is missing (go test -update writes it)", path)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", path, diff)
	}
}
