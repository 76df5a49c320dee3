package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/vmcred/vmcred/host/access"
	"github.com/vmcred/vmcred/host/internal/goldenfile"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
	"github.com/vmcred/vmcred/shared/manifest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// helperMarker as argv[1] makes the test binary act as a child process
// for run: see helper.
const helperMarker = "vmcred-test-helper"

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == helperMarker {
		os.Exit(helper(os.Args[2], os.Args[3:]))
	}
	os.Exit(m.Run())
}

// helper is a child process for run's tests. Modes:
//
//	dump EXIT        print /proc/self/cmdline and /proc/self/environ, and
//	                 the size of every file named by path= or file=; exit EXIT
//	wait-term        print "ready", exit 7 on SIGTERM (99 after 10 s)
//	kill-self        die of SIGKILL
//	fake-ch          play cloud-hypervisor's API on --api-socket path=X:
//	                 record requests to X.requests, exit 0 after vm.boot
//	fake-agent OUTCOME  play a guest: systemd's READY=1 and the vmcred
//	                 agent on the manifest's channel (run_channel_test.go)
func helper(mode string, args []string) int {
	switch mode {
	case "dump":
		for _, f := range []string{"/proc/self/cmdline", "/proc/self/environ"} {
			b, err := os.ReadFile(f)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 90
			}
			fmt.Printf("== %s\n%s\n", f, bytes.ReplaceAll(b, []byte{0}, []byte{'\n'}))
		}
		for _, a := range args {
			for _, kv := range strings.Split(strings.ReplaceAll(a, ",,", "\x00"), ",") {
				k, v, _ := strings.Cut(kv, "=")
				if k == "path" || k == "file" {
					p := strings.ReplaceAll(v, "\x00", ",")
					b, err := os.ReadFile(p)
					fmt.Printf("payload %s: %d bytes, err %v\n", p, len(b), err)
				}
			}
		}
		fmt.Fprintln(os.Stderr, "helper stderr")
		code, _ := strconv.Atoi(args[0])
		return code
	case "wait-term":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		fmt.Println("ready")
		select {
		case <-ch:
			fmt.Println("got SIGTERM")
			return 7
		case <-time.After(10 * time.Second):
			return 99
		}
	case "kill-self":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(10 * time.Second)
		return 98
	case "fake-ch":
		return fakeCH(args)
	case "fake-agent":
		return fakeAgent(args)
	}
	return 97
}

func fakeCH(args []string) int {
	var sock string
	for i, a := range args {
		if a == "--api-socket" && i+1 < len(args) {
			sock = strings.TrimPrefix(args[i+1], "path=")
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake-ch: no --api-socket")
		return 96
	}
	fmt.Printf("== argv\n%s\n", strings.Join(os.Args, "\n"))
	fmt.Printf("== environ\n%s\n", strings.Join(os.Environ(), "\n"))
	// Listen late, so that run has to wait for the socket.
	time.Sleep(200 * time.Millisecond)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 95
	}
	rec, err := os.OpenFile(sock+".requests", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 94
	}
	booted := make(chan struct{})
	var once sync.Once
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(rec, "%s %s %s\n%s\n", r.Method, r.URL.Path, r.Header.Get("Content-Type"), body)
		w.WriteHeader(http.StatusNoContent)
		if r.URL.Path == "/api/v1/vm.boot" {
			once.Do(func() { close(booted) })
		}
	})}
	go srv.Serve(ln)
	select {
	case <-booted:
	case <-time.After(10 * time.Second):
		return 93
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	rec.Close()
	return 0
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a child's
// stdout copier and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// detRand is a deterministic byte stream: SHA-256 of a counter.
type detRand struct {
	n   uint64
	buf []byte
}

func (r *detRand) Read(p []byte) (int, error) {
	for i := range p {
		if len(r.buf) == 0 {
			var c [8]byte
			binary.BigEndian.PutUint64(c[:], r.n)
			r.n++
			s := sha256.Sum256(c[:])
			r.buf = s[:]
		}
		p[i], r.buf = r.buf[0], r.buf[1:]
	}
	return len(p), nil
}

// harness runs vmcred-host in-process with fixed randomness and time, and
// captures stdout, stderr and the log.
type harness struct {
	t                   *testing.T
	stdout, stderr, log syncBuffer
	env                 map[string]string
	deps                deps
	signals             chan os.Signal
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, env: map[string]string{}, signals: make(chan os.Signal, 1)}
	h.deps = deps{
		rand:    &detRand{},
		now:     func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
		source:  source.Env{Getenv: h.getenv, User: func() string { return "tester (uid 0)" }},
		lookup:  access.OSLookup(),
		stdin:   strings.NewReader(""),
		signals: h.signals,
	}
	return h
}

func (h *harness) getenv(k string) string { return h.env[k] }

// run runs vmcred-host ARGS and returns the exit code.
func (h *harness) run(args ...string) int {
	h.t.Helper()
	env := &cli.Env{
		Stdout: &h.stdout, Stderr: &h.stderr, Getenv: h.getenv, Version: "test",
		Log: logging.New(&h.log, logging.Config{Level: zapcore.DebugLevel, Name: "vmcred-host"}),
	}
	return cli.Main(context.Background(), "vmcred-host", commands(h.deps), args, env)
}

// secretFile writes a 0400 secret file and returns its path.
func secretFile(t *testing.T, dir, name string, value []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, value, 0o400); err != nil {
		t.Fatal(err)
	}
	return p
}

// goldenKey writes a fixed signing key (mode 0400) and returns its path
// and public half.
func goldenKey(t *testing.T, dir string) (string, ed25519.PublicKey) {
	t.Helper()
	seed := sha256.Sum256([]byte("vmcred cmd golden key"))
	key := ed25519.NewKeyFromSeed(seed[:])
	b, err := manifest.MarshalPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return secretFile(t, dir, "sign.key", b), key.Public().(ed25519.PublicKey)
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldenfile.Check(t, *update, name, got)
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listFiles returns every regular file under root, with its mode.
func listFiles(t *testing.T, roots ...string) map[string]os.FileMode {
	t.Helper()
	out := map[string]os.FileMode{}
	for _, root := range roots {
		err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			if fi.Mode().IsRegular() {
				out[p] = fi.Mode()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}
