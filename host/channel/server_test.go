package channel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/notify"
)

func TestNotifyStream(t *testing.T) {
	path, ev := serve(t, nil)
	c := dial(t, path)
	if _, err := c.Write([]byte("READY=1\nSTATUS=Ready.")); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(make([]byte, 1))
	closed := time.Since(sent)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read after half-close: %d bytes, %v; want EOF", n, err)
	}
	// A protocol bound, not a benchmark: the server must not wait for its
	// idle timeout (250 ms) once it has seen EOF.
	if closed >= 100*time.Millisecond {
		t.Errorf("server closed %v after the half-close; want < 100ms", closed)
	}
	t.Logf("server closed %v after the half-close", closed)
	ev.waitFor(t, "notify event", func() bool { return len(ev.notify) == 1 })
	want := notify.Message{Fields: []notify.Field{{Key: "READY", Value: "1"}, {Key: "STATUS", Value: "Ready."}}}
	if diff := cmp.Diff(want, ev.notify[0]); diff != "" {
		t.Errorf("message (-want +got):\n%s", diff)
	}
	if ev.ends[0] != "eof" {
		t.Errorf("ended by %q, want eof", ev.ends[0])
	}
}

// TestNotifyWithoutHalfClose: cloud-hypervisor ≤ 52 never forwards the
// half-close, so the idle timeout ends the message; "READY=1" is shorter
// than Magic, which must not make the server wait for more.
func TestNotifyWithoutHalfClose(t *testing.T) {
	path, ev := serve(t, func(c *Config) { c.NotifyIdle = 100 * time.Millisecond })
	c := dial(t, path)
	if _, err := c.Write([]byte("READY=1")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := c.Read(make([]byte, 1))
	took := time.Since(start)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read: %d bytes, %v; want EOF", n, err)
	}
	if took > 2*time.Second {
		t.Errorf("server closed after %v; want about the 100ms idle timeout", took)
	}
	ev.waitFor(t, "notify event", func() bool { return len(ev.notify) == 1 })
	if !ev.notify[0].Ready() || ev.ends[0] != "idle" {
		t.Errorf("got ready=%v end=%q, want ready by idle", ev.notify[0].Ready(), ev.ends[0])
	}
}

// TestHostilePeers: each bad peer is dropped (naming the problem) and
// the server still serves the right guest afterwards.
func TestHostilePeers(t *testing.T) {
	const helloTimeout = 800 * time.Millisecond
	path, ev := serve(t, func(c *Config) { c.HelloTimeout = helloTimeout; c.NotifyTimeout = helloTimeout })
	tests := []struct {
		name   string
		send   []byte
		slow   bool // one byte at a time, one a second
		expect string
	}{
		{name: "random bytes", send: append([]byte{0x9c}, randomBytes(t, 4096)...), expect: "not sd_notify"},
		{name: "vmcred's magic", send: []byte("\x00VMCRED/2\n"), expect: "not sd_notify"},
		{name: "notify with NUL", send: []byte("READY=1\x00"), expect: "NUL"},
		{name: "notify over 4096 bytes", send: []byte("STATUS=" + strings.Repeat("x", 5000)), expect: "too large"},
		{name: "slow notify peer", send: []byte("READY=1\nSTATUS=slow"), slow: true, expect: ""},
		{name: "silent peer", send: nil, expect: "within"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev.mu.Lock()
			before := len(ev.dropped) + len(ev.notify)
			ev.mu.Unlock()
			c := dial(t, path)
			start := time.Now()
			go func() {
				if !tt.slow {
					c.Write(tt.send)
					return
				}
				for _, b := range tt.send {
					if _, err := c.Write([]byte{b}); err != nil {
						return
					}
					time.Sleep(time.Second)
				}
			}()
			// The server ends every one of them within its limits.
			_, _ = io.Copy(io.Discard, c)
			if took := time.Since(start); took > helloTimeout+2*time.Second {
				t.Errorf("connection lasted %v; want it cut within the %v hello timeout", took, helloTimeout)
			}
			ev.waitFor(t, "an event", func() bool { return len(ev.dropped)+len(ev.notify) > before })
			if tt.expect != "" {
				ev.mu.Lock()
				last := ev.dropped[len(ev.dropped)-1]
				ev.mu.Unlock()
				if !strings.Contains(last.Error(), tt.expect) {
					t.Errorf("dropped with %q, want it to mention %q", last, tt.expect)
				}
			}
		})
	}
	sendNotify(t, path, "READY=1")
	ev.waitFor(t, "the good message after the hostile ones", func() bool { return len(ev.notify) > 0 && ev.notify[len(ev.notify)-1].Ready() })
}

// TestFlood: 1000 connections at once. The first MaxConns hold their slots
// until the hello timeout; the rest are closed at once. Memory stays
// bounded, and the right guest is served afterwards.
func TestFlood(t *testing.T) {
	const helloTimeout = time.Second
	path, ev := serve(t, func(c *Config) { c.HelloTimeout = helloTimeout })
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	const n = 1000
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// Half of them start a notify message and never end it, the rest
	// say nothing.
	var wg sync.WaitGroup
	for i, c := range conns {
		if i%2 == 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Write([]byte("STATUS=" + strings.Repeat("x", 1000)))
			}()
		}
	}
	wg.Wait()
	peakHeap := sampleHeap(10 * time.Millisecond)
	start := time.Now()
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}
	peak := peakHeap()
	t.Logf("%d connections ended within %v; heap in use %d KiB before, peak %d KiB", n, time.Since(start), base.HeapInuse>>10, peak>>10)
	if peak > 64<<20 {
		t.Errorf("heap in use peaked at %d MiB during the flood; want < 64 MiB", peak>>20)
	}
	ev.waitFor(t, "every connection accounted for", func() bool { return len(ev.dropped)+len(ev.notify) >= n })
	busy := ev.droppedWith(ErrBusy)
	if busy == 0 || busy > n-1 {
		t.Errorf("%d connections refused as busy", busy)
	}
	sendNotify(t, path, "READY=1")
	ev.waitFor(t, "the good message after the flood", func() bool { return len(ev.notify) > 0 && ev.notify[len(ev.notify)-1].Ready() })
}

// sampleHeap samples the heap in use every interval until the returned
// function is called, which returns the peak.
func sampleHeap(interval time.Duration) (peak func() uint64) {
	var highest uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			highest = max(highest, m.HeapInuse)
			select {
			case <-stop:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-done
		return highest
	}
}

// TestExpectCID: an AF_VSOCK peer from another CID is refused before it
// can send anything. The CID comes from an injected function: tests never
// open AF_VSOCK sockets.
func TestExpectCID(t *testing.T) {
	for _, tt := range []struct {
		cid  uint32
		want bool
	}{{cid: 7, want: false}, {cid: 3, want: true}} {
		t.Run(fmt.Sprint(tt.cid), func(t *testing.T) {
			path, ev := serve(t, func(c *Config) {
				c.ExpectCID = 3
				c.PeerCID = func(net.Conn) (uint32, bool) { return tt.cid, true }
			})
			if tt.want {
				sendNotify(t, path, "READY=1")
				ev.waitFor(t, "message", func() bool { return len(ev.notify) == 1 })
				return
			}
			c := dial(t, path)
			c.Write([]byte("READY=1"))
			_, _ = io.Copy(io.Discard, c)
			ev.waitFor(t, "refusal", func() bool { return ev.droppedWith(ErrWrongCID) == 1 })
		})
	}
}

// TestShutdown: cancelling Serve's context ends connections in progress
// (serve's cleanup checks that Serve returns).
func TestShutdown(t *testing.T) {
	path, _ := serve(t, nil)
	c := dial(t, path)
	c.Write([]byte("REA"))
}
