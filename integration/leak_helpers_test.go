package integration

// Helpers for the leak hunt and the fault tests: canary needles in every
// encoding a value could leak in, a scanner that names the place and the
// encoding (never the bytes), a /proc watcher for the argv and environment
// of a command and its children while they run, an sd_notify sink, and a
// Unix-socket relay that can hold a transfer mid-way.
//
// Nothing here prints a value: messages name credentials and places only,
// and command output is passed through redact before it is ever logged.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// needle is one encoding of a secret to search for. what names the secret
// and the encoding ("credential \"api-key\" as hex"), never the bytes.
type needle struct {
	what string
	b    []byte
}

// Prefixes an OEM string carrying a credential starts with (base64 forms).
const (
	oemVmcred   = "io.vmcred.credential.binary:"
	oemSystemd  = "io.systemd.credential.binary:"
	oemText     = "io.systemd.credential:"
	manifestOEM = oemVmcred + "vmcred.manifest="
)

// stableBase64 returns the base64 characters of w that do not depend on
// what surrounds w when w sits at byte offset shift (mod 3) of a longer
// encoded stream: only groups of three bytes that lie wholly inside w.
func stableBase64(enc *base64.Encoding, w []byte, shift int) string {
	padded := append(make([]byte, shift), w...)
	s := enc.EncodeToString(padded)
	first := (shift + 2) / 3     // first group wholly inside w
	last := (shift + len(w)) / 3 // groups before this one end inside w
	if last <= first {
		return ""
	}
	return s[4*first : 4*last]
}

// leakEncodings adds the raw, hex and base64 forms (all three alignments,
// standard and URL alphabets) of w to out, labelled label.
func leakEncodings(out []needle, label string, w []byte) []needle {
	out = append(out,
		needle{label + " (raw)", w},
		needle{label + " as hex", []byte(hex.EncodeToString(w))},
		needle{label + " as upper-case hex", []byte(strings.ToUpper(hex.EncodeToString(w)))},
		needle{label + " as padded base64", []byte(base64.StdEncoding.EncodeToString(w))},
	)
	for shift := range 3 {
		for _, e := range []struct {
			name string
			enc  *base64.Encoding
		}{{"base64", base64.StdEncoding}, {"url-safe base64", base64.URLEncoding}} {
			if s := stableBase64(e.enc, w, shift); len(s) >= 12 {
				out = append(out, needle{fmt.Sprintf("%s as %s (alignment %d)", label, e.name, shift), []byte(s)})
			}
		}
	}
	return out
}

// leakWindows are the parts of v searched for: all of it when short; else its
// first, middle and last 32 bytes (a dump of a large value holds at least
// one of them). Values of 24 bytes or more also contribute their first and
// last 12 bytes, which catches a truncated echo.
func leakWindows(v []byte) map[string][]byte {
	w := map[string][]byte{}
	switch {
	case len(v) <= 64:
		w["value"] = v
	default:
		m := len(v)/2 - 16
		w["value's first 32 bytes"] = v[:32]
		w["value's middle 32 bytes"] = v[m : m+32]
		w["value's last 32 bytes"] = v[len(v)-32:]
	}
	if len(v) >= 24 {
		w["value's first 12 bytes"] = v[:12]
		w["value's last 12 bytes"] = v[len(v)-12:]
	}
	return w
}

// secretNeedles are every needle for the credential name with value v,
// including base64 of the whole OEM string that would carry it.
func secretNeedles(kind, name string, v []byte) []needle {
	var out []needle
	label := fmt.Sprintf("%s %q", kind, name)
	for part, w := range leakWindows(v) {
		out = leakEncodings(out, label+" "+part, w)
	}
	if len(v) <= 4096 {
		for _, prefix := range []string{oemVmcred, oemSystemd} {
			oem := []byte(prefix + name + "=" + base64.StdEncoding.EncodeToString(v))
			l := fmt.Sprintf("%s as the base64 of its OEM string %s…", label, prefix)
			out = append(out, needle{l, []byte(base64.StdEncoding.EncodeToString(oem))})
			for shift := range 3 {
				if s := stableBase64(base64.StdEncoding, oem, shift); s != "" {
					out = append(out, needle{fmt.Sprintf("%s (alignment %d)", l, shift), []byte(s)})
				}
			}
		}
	}
	return out
}

// leakHits returns the labels of the needles in data.
func leakHits(data []byte, ns []needle) []string {
	var hits []string
	for _, n := range ns {
		if len(n.b) > 0 && bytes.Contains(data, n.b) {
			hits = append(hits, n.what)
		}
	}
	return hits
}

// redact replaces every needle in s, so command output can be logged.
func redact(s string, ns []needle) string {
	// Longest first, so a value is replaced whole before its windows.
	sorted := slices.Clone(ns)
	slices.SortFunc(sorted, func(a, b needle) int { return len(b.b) - len(a.b) })
	for _, n := range sorted {
		if len(n.b) >= 8 {
			s = strings.ReplaceAll(s, string(n.b), "<"+n.what+">")
		}
	}
	return s
}

// randomText is a random printable secret of 26 base32 characters.
func randomText() []byte { return []byte(rand.Text()) }

// randomBytes is n random bytes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// digestEncodings are the SHA-256 of a value in every encoding the hunt
// searches: a digest of a guessable value is as good as the value to
// someone who can test guesses, so it may live only where the value may.
func digestEncodings(kind, name string, v []byte) []needle {
	sum := sha256.Sum256(v)
	return leakEncodings(nil, fmt.Sprintf("SHA-256 of %s %q", kind, name), sum[:])
}

// procWatch samples /proc/PID/cmdline and /proc/PID/environ of a process
// and all its descendants while it runs.
type procWatch struct {
	root int
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	snaps map[string][][]byte // place -> distinct contents seen
	pids  map[int]string      // pid -> comm
}

func watchProcs(pid int) *procWatch {
	w := &procWatch{root: pid, stop: make(chan struct{}), done: make(chan struct{}), snaps: map[string][][]byte{}, pids: map[int]string{}}
	go w.loop()
	return w
}

func (w *procWatch) loop() {
	defer close(w.done)
	for {
		w.sample()
		select {
		case <-w.stop:
			return
		case <-time.After(3 * time.Millisecond):
		}
	}
}

// descendants lists pid and every process below it, through the children
// files of each of its threads.
func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && i < 256; i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], task.Name()))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil && !slices.Contains(out, c) {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

func (w *procWatch) sample() {
	for _, pid := range descendants(w.root) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
			if err != nil || len(b) == 0 {
				continue
			}
			what := "argv"
			if f == "environ" {
				what = "environment"
			}
			place := fmt.Sprintf("%s of pid %d (%s)", what, pid, name)
			w.mu.Lock()
			w.pids[pid] = name
			if !slices.ContainsFunc(w.snaps[place], func(s []byte) bool { return bytes.Equal(s, b) }) {
				w.snaps[place] = append(w.snaps[place], b)
			}
			w.mu.Unlock()
		}
	}
}

// finish stops sampling (after one last sample) and returns what was seen.
func (w *procWatch) finish() (map[string][][]byte, map[int]string) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.snaps, w.pids
}

// notifySink is a NOTIFY_SOCKET (unixgram) that keeps every message.
type notifySink struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs [][]byte
	done chan struct{}
}

func newNotifySink(t *testing.T, path string) *notifySink {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &notifySink{path: path, conn: c, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, bytes.Clone(buf[:n]))
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-s.done })
	return s
}

// messages returns the messages received from index from on.
func (s *notifySink) messages(from int) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if from > len(s.msgs) {
		return nil
	}
	return slices.Clone(s.msgs[from:])
}

func (s *notifySink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// syncBuffer is a bytes.Buffer safe for a child's copier and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// watchedProc is a started command.
type watchedProc struct {
	label          string
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	watch          *procWatch
	waited         chan struct{}
	err            error
}

// startProc starts bin with args and exactly env, and watches /proc for
// it and its children. The test's cleanup kills it (by its PID) if it
// still runs.
func startProc(t *testing.T, label string, env []string, cred *syscall.Credential, bin string, args ...string) *watchedProc {
	t.Helper()
	p := &watchedProc{label: label, cmd: exec.Command(bin, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, waited: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if cred != nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", label, err)
	}
	p.watch = watchProcs(p.cmd.Process.Pid)
	go func() { p.err = p.cmd.Wait(); close(p.waited) }()
	t.Cleanup(func() {
		select {
		case <-p.waited:
		default:
			p.cmd.Process.Kill()
			<-p.waited
		}
		p.watch.finish()
	})
	return p
}

// wait waits up to d for the process to exit and returns its exit code
// (-1 when a signal ended it). On a timeout it kills the process, marks
// the test failed and returns -2.
func (p *watchedProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.waited:
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.waited
		t.Errorf("%s still running after %v (killed)", p.label, d)
		return -2
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", p.label, p.err)
	return -1
}

// exited reports whether the process has ended.
func (p *watchedProc) exited() bool {
	select {
	case <-p.waited:
		return true
	default:
		return false
	}
}

// holdRelay is a Unix-socket relay between the guest and the channel server,
// the way a hybrid-vsock VMM sits between them. On its first connection it
// forwards holdAfter bytes from the server and then stops reading from it,
// so the server is certainly blocked mid-transfer; held is closed then,
// and after release it forwards whatever the server still delivers and
// closes. Later connections are plain relays; when the server is gone,
// the guest's connection is closed at once.
type holdRelay struct {
	l           net.Listener
	upstream    string
	holdAfter   int64
	held        chan struct{}
	release     chan struct{}
	releaseOnce sync.Once
	conns       atomic.Int32
	first       atomic.Int64 // held-direction bytes relayed on the first connection
	wg          sync.WaitGroup
	// upward holds what the dialing side sends (the host pushing to the
	// agent) instead of what the upstream side sends.
	upward bool
}

func newHoldRelay(t *testing.T, path, upstream string, holdAfter int64) *holdRelay {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := &holdRelay{l: l, upstream: upstream, holdAfter: holdAfter, held: make(chan struct{}), release: make(chan struct{})}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		l.Close()
		r.unhold()
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("relay goroutines still running")
		}
	})
	return r
}

// unhold lets the first connection go on.
func (r *holdRelay) unhold() { r.releaseOnce.Do(func() { close(r.release) }) }

func (r *holdRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		n := r.conns.Add(1)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.handle(c, n == 1)
		}()
	}
}

func (r *holdRelay) handle(down net.Conn, first bool) {
	defer down.Close()
	up, err := net.Dial("unix", r.upstream)
	if err != nil {
		if first {
			close(r.held)
		}
		return
	}
	defer up.Close()
	src, dst := up, down // the held direction
	if r.upward {
		src, dst = down, up
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		io.Copy(src, dst)
		if cw, ok := src.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	if !first {
		io.Copy(dst, src)
		return
	}
	n, _ := io.CopyN(dst, src, r.holdAfter)
	r.first.Add(n)
	close(r.held)
	<-r.release
	m, _ := io.Copy(dst, src)
	r.first.Add(m)
}

// helpCommands lists the commands a binary's --help overview names.
func helpCommands(t *testing.T, bin string) []string {
	t.Helper()
	r := run(t, bin, nil, "--help")
	if r.code != 0 {
		t.Fatalf("%s --help: exit %d", filepath.Base(bin), r.code)
	}
	var cmds []string
	in := false
	for line := range strings.SplitSeq(r.stdout, "\n") {
		switch {
		case strings.HasPrefix(line, "Commands:"):
			in = true
		case in && strings.TrimSpace(line) == "":
			in = len(cmds) == 0
		case in && strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   "):
			// "  NAME  summary"; a wrapped summary goes on deeper.
			if f := strings.Fields(line); len(f) > 0 {
				cmds = append(cmds, f[0])
			}
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("%s --help lists no commands", filepath.Base(bin))
	}
	return cmds
}

var (
	flagLine  = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z][a-z0-9-]*)`)
	upperWord = regexp.MustCompile(`^[A-Z][A-Z_]*$`)
)

// helpFlags returns the flags a command's --help lists, and the
// positional words (upper-case, outside brackets) of its usage line.
func helpFlags(t *testing.T, bin, cmd string) (flags map[string]bool, positional []string) {
	t.Helper()
	r := run(t, bin, nil, cmd, "--help")
	if r.code != 0 {
		t.Fatalf("%s %s --help: exit %d", filepath.Base(bin), cmd, r.code)
	}
	flags = map[string]bool{}
	lines := strings.Split(r.stdout, "\n")
	// The usage is the first paragraph (help wraps it).
	end := slices.Index(lines, "")
	if end < 0 {
		end = len(lines)
	}
	for i, line := range lines {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = true
		}
		if i == 0 {
			usage, _ := strings.CutPrefix(strings.Join(lines[:end], " "), "Usage: ")
			f := strings.Fields(usage)
			depth := 0
			for j, w := range f {
				open := strings.Count(w, "[")
				if j >= 2 && depth == 0 && open == 0 && !strings.HasPrefix(w, "-") && upperWord.MatchString(w) {
					positional = append(positional, w)
				}
				depth += open - strings.Count(w, "]")
			}
		}
	}
	return flags, positional
}

// TestLeakNeedles checks the hunt's own eyes: a value dumped in any of
// the encodings it claims to catch, inside other bytes at any offset, is
// found; unrelated random data is not.
func TestLeakNeedles(t *testing.T) {
	for _, v := range [][]byte{randomText(), randomBytes(48), randomBytes(100 << 10)} {
		ns := secretNeedles("credential", "x", v)
		w := v
		if len(v) > 64 {
			w = v[len(v)/2-40 : len(v)/2+40] // a dump of part of a large value
		}
		oem := []byte(oemVmcred + "x=" + base64.StdEncoding.EncodeToString(v))
		for pad := range 3 {
			blob := append(append(randomBytes(pad+7), w...), randomBytes(5)...)
			for what, enc := range map[string][]byte{
				"raw":            blob,
				"hex":            []byte(hex.EncodeToString(blob)),
				"upper hex":      []byte(strings.ToUpper(hex.EncodeToString(blob))),
				"base64":         []byte(base64.StdEncoding.EncodeToString(blob)),
				"raw base64":     []byte(base64.RawStdEncoding.EncodeToString(blob)),
				"url base64":     []byte(base64.URLEncoding.EncodeToString(blob)),
				"the OEM string": append(randomBytes(pad), oem...),
			} {
				if hits := leakHits(enc, ns); len(hits) == 0 {
					t.Errorf("%d-byte value at offset %d as %s: not found", len(v), pad+7, what)
				}
			}
			if len(v) <= 4096 {
				enc := []byte(base64.StdEncoding.EncodeToString(append(randomBytes(pad), oem...)))
				if hits := leakHits(enc, ns); len(hits) == 0 {
					t.Errorf("%d-byte value: base64 of its OEM string at offset %d not found", len(v), pad)
				}
			}
		}
		if hits := leakHits(randomBytes(1<<20), ns); len(hits) > 0 {
			t.Errorf("random data matched %v", hits)
		}
		if got := redact("<"+string(v)+">", ns); strings.Contains(got, string(w)) {
			t.Errorf("redact left the value in place")
		}
	}
}
