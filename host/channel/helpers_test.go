package channel

import (
	"context"
	"crypto/rand"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/notify"
)

// canaryToken is recognisable so tests can assert it never shows up in an
// error, event or file. It is exactly proto.TokenSize bytes.
const canaryToken = "TOKEN-CANARY-0123456789abcdefghi"

var testNonce = [manifest.NonceSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

// fixture is one VM's serve state with its sources on disk.
type fixture struct {
	dir    string
	state  *State
	values map[string][]byte
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// newFixture writes each value to a 0400 file and builds the state.
func newFixture(t testing.TB, values map[string][]byte) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), values: values}
	var creds []StateCredential
	for _, name := range slices.Sorted(maps.Keys(values)) {
		v := values[name]
		p := filepath.Join(f.dir, "src-"+name)
		if err := os.WriteFile(p, v, 0o400); err != nil {
			t.Fatal(err)
		}
		creds = append(creds, StateCredential{Name: name, Size: int64(len(v)), SHA256: credential.NewSecret(v).SHA256(), File: p})
	}
	st, err := NewState("test-vm", testNonce, credential.NewSecret([]byte(canaryToken)), "unix:"+filepath.Join(f.dir, "ch.sock"), time.Unix(1_800_000_000, 0), creds)
	if err != nil {
		t.Fatal(err)
	}
	f.state = st
	return f
}

// events records what the server reported.
type events struct {
	mu      sync.Mutex
	notify  []notify.Message
	ends    []string
	fetched [][]string
	reports []proto.Report
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
		Fetched: func(_ Peer, _ Hello, names []string, _ int64) {
			e.mu.Lock()
			e.fetched = append(e.fetched, names)
			e.mu.Unlock()
			e.poke()
		},
		Report: func(_ Peer, _ Hello, r proto.Report) string {
			e.mu.Lock()
			e.reports = append(e.reports, r)
			e.mu.Unlock()
			e.poke()
			return "recorded " + r.Outcome.String()
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

// serve starts a server for f on a Unix socket in a temporary folder and
// returns the socket's path; the server stops when the test ends.
func serve(t testing.TB, f *fixture, mod func(*Config)) (string, *events) {
	t.Helper()
	ev := newEvents()
	cfg := Config{State: func() (*State, error) { return f.state, nil }, Events: ev.Events()}
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

func goodHello() proto.Hello {
	return proto.Hello{Token: credential.NewSecret([]byte(canaryToken)), BootNonce: testNonce, BootID: "boot-1", AgentVersion: "test 1"}
}

func readyReport() proto.Report {
	return proto.Report{Outcome: proto.OutcomeReady, Summary: "all verified", AgentVersion: "test 1"}
}
