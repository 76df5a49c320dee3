// Command testsum runs `go test -json` with the arguments it is given and
// prints what plain `go test` would (each package's ok/FAIL line, and the
// output of failed tests), then one line naming the tests that skipped
// and why, grouped (for a missing tool, its name: testenv's hints say
// "NAME not found: …"), and last "N passed, N failed". It exits non-zero
// when go test does or when a test failed.
//
// It is what `make test` runs: a skip's fix-it hint was visible only with
// go test -v, so a machine without QEMU passed quietly with a third of
// the integration tests skipped.
//
// Usage: testsum GO test [flags] [packages]
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
)

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output
	Test       string
	Output     string
}

func main() {
	if len(os.Args) < 3 || os.Args[2] != "test" {
		fmt.Fprintln(os.Stderr, "usage: testsum GO test [flags] [packages]")
		os.Exit(2)
	}
	args := append([]string{"test", "-json"}, os.Args[3:]...)
	cmd := exec.Command(os.Args[1], args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(1)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(1)
	}
	s := newSummary(os.Stdout)
	s.read(out)
	werr := cmd.Wait()
	s.finish()
	var ee *exec.ExitError
	switch {
	case errors.As(werr, &ee):
		os.Exit(ee.ExitCode())
	case werr != nil:
		fmt.Fprintln(os.Stderr, "testsum:", werr)
		os.Exit(1)
	case s.failed > 0 || s.pkgFailed:
		os.Exit(1)
	}
}

// summary turns events into plain go test output and counts.
type summary struct {
	w         io.Writer
	testOut   map[string][]string // package + "\x00" + test → output lines
	pkgOut    map[string][]string
	passed    int
	failed    int
	pkgFailed bool
	skips     map[string]int // reason → tests
}

func newSummary(w io.Writer) *summary {
	return &summary{w: w, testOut: map[string][]string{}, pkgOut: map[string][]string{}, skips: map[string]int{}}
}

func (s *summary) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Fprintln(s.w, sc.Text()) // not an event: go's own message
			continue
		}
		s.add(e)
	}
}

func (s *summary) add(e event) {
	key := e.Package + "\x00" + e.Test
	switch {
	case e.Action == "build-output":
		fmt.Fprint(s.w, e.Output)
	case e.Action == "output" && e.Test != "":
		s.testOut[key] = append(s.testOut[key], e.Output)
	case e.Action == "output":
		s.pkgOut[e.Package] = append(s.pkgOut[e.Package], e.Output)
	case e.Test != "" && e.Action == "pass":
		s.passed++
		delete(s.testOut, key)
	case e.Test != "" && e.Action == "skip":
		s.skips[skipReason(s.testOut[key])]++
		delete(s.testOut, key)
	case e.Test != "" && e.Action == "fail":
		s.failed++
		for _, l := range s.testOut[key] {
			if !strings.HasPrefix(l, "=== ") {
				fmt.Fprint(s.w, l)
			}
		}
		delete(s.testOut, key)
	case e.Test == "" && (e.Action == "pass" || e.Action == "skip"):
		for _, l := range s.pkgOut[e.Package] {
			if strings.HasPrefix(l, "ok  ") || strings.HasPrefix(l, "?   ") {
				fmt.Fprint(s.w, l)
			}
		}
		delete(s.pkgOut, e.Package)
	case e.Test == "" && e.Action == "fail":
		s.pkgFailed = true
		for _, l := range s.pkgOut[e.Package] {
			if l != "PASS\n" {
				fmt.Fprint(s.w, l)
			}
		}
		delete(s.pkgOut, e.Package)
	}
}

// skipReason is the first message line of a skipped test's output: for
// testenv's "NAME not found: HINT", NAME; else the message, cut short.
func skipReason(lines []string) string {
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		if _, msg, ok := strings.Cut(t, ": "); ok && strings.Contains(t, ".go:") {
			t = msg
		}
		if tool, _, ok := strings.Cut(t, " not found: "); ok && !strings.Contains(tool, " ") {
			return "no " + tool
		}
		if len(t) > 60 {
			t = t[:57] + "..."
		}
		return t
	}
	return "no reason given"
}

func (s *summary) finish() {
	if s.failed > 0 || s.pkgFailed {
		fmt.Fprintln(s.w, "FAIL")
	}
	if n := len(s.skips); n > 0 {
		reasons := make([]string, 0, n)
		total := 0
		for r, c := range s.skips {
			reasons = append(reasons, fmt.Sprintf("%s (%d)", r, c))
			total += c
		}
		sort.Strings(reasons)
		fmt.Fprintf(s.w, "skipped %d: %s; go test -v shows each hint\n", total, strings.Join(reasons, ", "))
	}
	fmt.Fprintf(s.w, "%d passed, %d failed\n", s.passed, s.failed)
}
