package channel

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/notify"
)

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// events records what the server reported.
type events struct {
	mu      sync.Mutex
	notify  []notify.Message
	ends    []string
	dropped []error
	changed chan struct{}
}

func newEvents() *events { return &events{changed: make(chan struct{}, 1024)} }

func (e *events) poke() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

func (e *events) Events() Events {
	return Events{
		Notify: func(_ Peer, m notify.Message, end string) {
			e.mu.Lock()
			e.notify, e.ends = append(e.notify, m), append(e.ends, end)
			e.mu.Unlock()
			e.poke()
		},
		Dropped: func(_ Peer, err error) {
			e.mu.Lock()
			e.dropped = append(e.dropped, err)
			e.mu.Unlock()
			e.poke()
		},
	}
}

// waitFor polls cond until it holds or 5 s pass.
func (e *events) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		e.mu.Lock()
		ok := cond()
		e.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-e.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (e *events) droppedWith(target error) int {
	n := 0
	for _, err := range e.dropped {
		if errors.Is(err, target) {
			n++
		}
	}
	return n
}

// serve starts a server on a Unix socket in a temporary folder and returns
// the socket's path; the server stops when the test ends.
func serve(t testing.TB, mod func(*Config)) (string, *events) {
	t.Helper()
	ev := newEvents()
	cfg := Config{Events: ev.Events()}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ch.sock")
	l, err := Listen(address.Address{Kind: address.Unix, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return within 5 s of its context ending")
		}
	})
	return path, ev
}

func dial(t testing.TB, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// sendNotify writes msg, half-closes and waits for the server to close.
func sendNotify(t testing.TB, path, msg string) {
	t.Helper()
	c := dial(t, path)
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	_, _ = c.Read(make([]byte, 1))
}
