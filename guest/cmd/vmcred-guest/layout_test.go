package main

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTerminal stands in for a terminal of cols columns (the kernel's
// TIOCGWINSZ answer) on whatever stdout the test gives.
func fakeTerminal(cols int) func(io.Writer) (int, bool) {
	return func(io.Writer) (int, bool) { return cols, true }
}

// TestPipedOutputIsWhole: on a narrow terminal the name column is
// shortened but a path never is; piped, nothing is shortened; and
// --no-legend leaves only the rows.
func TestPipedOutputIsWhole(t *testing.T) {
	tr := build(t, "good", randomValue)
	// A long credstore path, as /dev/shm/vmcred-demo.XXXXXX/credstore was.
	long := "/run/" + strings.Repeat("very-long-folder-name/", 4) + "credstore"
	r := run(tr.defaults(), "list", "--credstore", "/run/credstore")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, tc := range []struct {
		name string
		term func(io.Writer) (int, bool)
	}{{"piped", nil}, {"terminal of 60 columns", fakeTerminal(60)}} {
		t.Run(tc.name, func(t *testing.T) {
			d := tr.defaults()
			d.terminal = tc.term
			d.statusDir = "/run/vmcred"
			tr.write(strings.TrimPrefix(long, "/")+"/api-key", []byte("x"), 0o400)
			r := run(d, "show", "api-key", "--search-path", long+",/run/credstore")
			if !bytes.Contains(r.stdout, []byte(long)) {
				t.Errorf("the path %s was cut:\n%s", long, r.stdout)
			}
		})
	}
	d := tr.defaults()
	r = run(d, "list", "--no-legend")
	if r.code != 0 {
		t.Fatalf("--no-legend: exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(r.stdout)), "\n")
	if len(lines) != 3 || strings.Contains(string(r.stdout), "NAME") || strings.Contains(string(r.stdout), "credentials") {
		t.Errorf("--no-legend printed more than the 3 rows:\n%s", r.stdout)
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) < 3 || f[2] != "12B" && f[2] != "32B" && f[2] != "24B" {
			t.Errorf("row %q: want a human size in the third column", l)
		}
	}
}

// TestRevealOnATerminal: a binary value is not written to a terminal
// without --force; text gets a final newline on a terminal (auto) and
// never when piped, as systemd-creds cat --newline=auto does.
func TestRevealOnATerminal(t *testing.T) {
	tr := build(t, "good", randomValue)
	store := filepath.Join("run", "credstore")
	tr.write(filepath.Join(store, "bin"), []byte{0x00, 0xff, 0x10, 'a'}, 0o400)
	tr.write(filepath.Join(store, "text"), []byte("hello"), 0o400)
	tests := []struct {
		name string
		term bool
		args []string
		code int
		out  string
	}{
		{"binary on a terminal", true, []string{"bin"}, 2, ""},
		{"binary on a terminal with --force", true, []string{"bin", "--force"}, 0, "\x00\xff\x10a\n"},
		{"binary piped", false, []string{"bin"}, 0, "\x00\xff\x10a"},
		{"text on a terminal", true, []string{"text"}, 0, "hello\n"},
		{"text on a terminal, --newline=no", true, []string{"text", "--newline=no"}, 0, "hello"},
		{"text piped", false, []string{"text"}, 0, "hello"},
		{"text piped, --newline=yes", false, []string{"text", "--newline", "yes"}, 0, "hello\n"},
		{"bad --newline", false, []string{"text", "--newline", "sometimes"}, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tr.defaults()
			d.terminal = nil
			if tt.term {
				d.terminal = fakeTerminal(80)
			}
			r := run(d, append([]string{"show", "--reveal"}, tt.args...)...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d: %s", r.code, tt.code, r.stderr)
			}
			if string(r.stdout) != tt.out {
				t.Errorf("stdout %q, want %q", r.stdout, tt.out)
			}
			if tt.code == 2 && tt.term && !bytes.Contains(r.stderr, []byte("--force")) {
				t.Errorf("refusal does not name --force: %s", r.stderr)
			}
		})
	}
}
