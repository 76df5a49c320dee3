package channel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/notify"
)

// fetchAndReport plays a well-behaved agent on path: HELLO, CREDENTIALS,
// REPORT, ACK.
func fetchAndReport(t testing.TB, path string, h proto.Hello) ([]proto.Credential, string) {
	t.Helper()
	c := dial(t, path)
	cl := proto.NewClient(c)
	if err := cl.WriteHello(h); err != nil {
		t.Fatalf("write hello: %v", err)
	}
	creds, err := cl.ReadCredentials()
	if err != nil {
		t.Fatalf("read credentials: %v", err)
	}
	if err := cl.WriteReport(readyReport()); err != nil {
		t.Fatalf("write report: %v", err)
	}
	ack, err := cl.ReadAck()
	if err != nil {
		t.Fatalf("read ack: %v", err)
	}
	return creds, ack
}

func TestFetchAndReport(t *testing.T) {
	f := newFixture(t, map[string][]byte{"api-key": randomBytes(t, 32), "big": randomBytes(t, 3<<20), "empty": {}})
	path, ev := serve(t, f, nil)
	creds, ack := fetchAndReport(t, path, goodHello())
	if ack != "recorded ready" {
		t.Errorf("ack %q", ack)
	}
	got := map[string][]byte{}
	for _, c := range creds {
		got[c.Name] = c.Value.Reveal()
	}
	if diff := cmp.Diff(f.values, got, cmp.Comparer(bytes.Equal)); diff != "" {
		t.Errorf("credentials differ (names and lengths only shown by the failure below)")
		for name, v := range f.values {
			if !bytes.Equal(v, got[name]) {
				t.Errorf("%s: got %d bytes, want %d", name, len(got[name]), len(v))
			}
		}
	}
	ev.waitFor(t, "report event", func() bool { return len(ev.reports) == 1 && len(ev.fetched) == 1 })
	if diff := cmp.Diff([]string{"api-key", "big", "empty"}, ev.fetched[0]); diff != "" {
		t.Errorf("fetched (-want +got):\n%s", diff)
	}
}

// TestRefusals: each refusal is an ERROR with its code, and an
// authenticated agent may still report.
func TestRefusals(t *testing.T) {
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 16)})
	tests := []struct {
		name        string
		hello       func() proto.Hello
		before      int // good fetches first
		refetch     bool
		code        proto.ErrorCode
		canReport   bool
		wantDropped error
	}{
		{name: "wrong token", hello: func() proto.Hello {
			h := goodHello()
			h.Token = credential.NewSecret([]byte(strings.Repeat("x", proto.TokenSize)))
			return h
		}, code: proto.CodeBadToken, wantDropped: ErrBadToken},
		{name: "wrong boot", hello: func() proto.Hello {
			h := goodHello()
			h.BootNonce[0] ^= 1
			return h
		}, code: proto.CodeWrongBoot, wantDropped: ErrWrongBoot},
		{name: "already fetched", hello: goodHello, before: 1, code: proto.CodeAlreadyFetched, canReport: true, wantDropped: ErrAlreadyFetched},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, ev := serve(t, f, func(c *Config) { c.AllowRefetch = tt.refetch })
			for i := 0; i < tt.before; i++ {
				fetchAndReport(t, path, goodHello())
			}
			c := dial(t, path)
			cl := proto.NewClient(c)
			if err := cl.WriteHello(tt.hello()); err != nil {
				t.Fatal(err)
			}
			_, err := cl.ReadCredentials()
			var re *proto.RemoteError
			if !errors.As(err, &re) || re.Code != tt.code {
				t.Fatalf("got %v, want a remote error with code %v", err, tt.code)
			}
			if strings.Contains(err.Error(), canaryToken) {
				t.Error("the refusal repeats the token")
			}
			if err := cl.WriteReport(readyReport()); err != nil && tt.canReport {
				t.Fatal(err)
			}
			ack, err := cl.ReadAck()
			switch {
			case tt.canReport && err != nil:
				t.Errorf("report after %v: %v", tt.code, err)
			case tt.canReport && ack == "":
				t.Error("empty ack")
			case !tt.canReport && err == nil:
				t.Errorf("an unauthenticated peer's report was acknowledged: %q", ack)
			}
			ev.waitFor(t, "drop event", func() bool { return ev.droppedWith(tt.wantDropped) > 0 })
			for _, d := range ev.dropped {
				if strings.Contains(d.Error(), canaryToken) {
					t.Errorf("drop event repeats the token: %v", d)
				}
			}
		})
	}
}

func TestAllowRefetch(t *testing.T) {
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 16)})
	path, ev := serve(t, f, func(c *Config) { c.AllowRefetch = true })
	for i := 0; i < 3; i++ {
		fetchAndReport(t, path, goodHello())
	}
	ev.waitFor(t, "3 fetches", func() bool { return len(ev.fetched) == 3 })
}

// TestSourceChanged: a source that no longer matches the manifest is not
// served; the agent gets CodeInternal and the host's event names the
// credential and file, not a value.
func TestSourceChanged(t *testing.T) {
	f := newFixture(t, map[string][]byte{"k": []byte("original-value")})
	p := f.state.Credentials[0].File
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("replaced-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	path, ev := serve(t, f, nil)
	cl := proto.NewClient(dial(t, path))
	if err := cl.WriteHello(goodHello()); err != nil {
		t.Fatal(err)
	}
	_, err := cl.ReadCredentials()
	var re *proto.RemoteError
	if !errors.As(err, &re) || re.Code != proto.CodeInternal || strings.Contains(re.Text, p) {
		t.Fatalf("got %v, want CodeInternal without the host path", err)
	}
	ev.waitFor(t, "drop naming the change", func() bool { return ev.droppedWith(ErrChanged) == 1 })
	msg := ev.dropped[0].Error()
	if !strings.Contains(msg, `"k"`) || !strings.Contains(msg, p) || strings.Contains(msg, "replaced-value") || strings.Contains(msg, "original-value") {
		t.Errorf("drop event %q: want the name and file, no value", msg)
	}
	// Not consumed: once the source is fixed, the fetch works.
	if err := os.WriteFile(p, []byte("original-value"), 0o600); err != nil {
		t.Fatal(err)
	}
	fetchAndReport(t, path, goodHello())
}

// TestNotifyStream: systemd ≥ 256's sd_notify over vsock-stream writes,
// half-closes and waits for EOF. The server records READY=1 and closes
// right after the EOF: the guest's PID 1 is blocked until then.
func TestNotifyStream(t *testing.T) {
	f := newFixture(t, nil)
	path, ev := serve(t, f, nil)
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
	f := newFixture(t, nil)
	path, ev := serve(t, f, func(c *Config) { c.NotifyIdle = 100 * time.Millisecond })
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
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 64)})
	const helloTimeout = 800 * time.Millisecond
	path, ev := serve(t, f, func(c *Config) { c.HelloTimeout = helloTimeout; c.NotifyTimeout = helloTimeout })
	huge := func(tp proto.Type) []byte {
		b := append([]byte(proto.Magic), byte(tp))
		return binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
	}
	tests := []struct {
		name   string
		send   []byte
		slow   bool // one byte at a time, one a second
		expect string
	}{
		{name: "random bytes", send: append([]byte{0x9c}, randomBytes(t, 4096)...), expect: "neither vmcred"},
		{name: "bad magic", send: []byte("\x00NOTVMCRED\n"), expect: "not a vmcred channel stream"},
		{name: "4 GiB hello", send: huge(proto.TypeHello), expect: "frame too large"},
		{name: "4 GiB credentials frame", send: huge(proto.TypeCredentials), expect: "unexpected frame type"},
		{name: "unknown frame type", send: huge(0x7f), expect: "unknown frame type"},
		{name: "notify with NUL", send: []byte("READY=1\x00"), expect: "NUL"},
		{name: "notify over 4096 bytes", send: []byte("STATUS=" + strings.Repeat("x", 5000)), expect: "too large"},
		{name: "slow vmcred peer", send: []byte(proto.Magic), slow: true, expect: "within"},
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
	fetchAndReport(t, path, goodHello())
}

// TestFlood: 1000 connections at once. The first MaxConns hold their slots
// until the hello timeout; the rest are closed at once. Memory stays
// bounded, and the right guest is served afterwards.
func TestFlood(t *testing.T) {
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 64)})
	const helloTimeout = time.Second
	path, ev := serve(t, f, func(c *Config) { c.HelloTimeout = helloTimeout })
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
	// Half of them claim a 4 GiB frame, the rest say nothing.
	var wg sync.WaitGroup
	for i, c := range conns {
		if i%2 == 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Write(append([]byte(proto.Magic), byte(proto.TypeHello), 0xff, 0xff, 0xff, 0xff))
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
	ev.waitFor(t, "every connection accounted for", func() bool { return len(ev.dropped) >= n })
	busy := ev.droppedWith(ErrBusy)
	if busy == 0 || busy > n-1 {
		t.Errorf("%d connections refused as busy", busy)
	}
	fetchAndReport(t, path, goodHello())
}

// TestWrongTokensAtSpeed: 16 peers send 1000 HELLOs with wrong tokens,
// each as soon as the previous refusal arrives, mixed with random bytes
// and 4 GiB length prefixes. Each wrong token gets its ERROR, the heap
// stays bounded, and the right guest is served afterwards: wrong guesses
// neither lock the server up nor wear it down.
func TestWrongTokensAtSpeed(t *testing.T) {
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 64)})
	path, ev := serve(t, f, nil)
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	const workers, perWorker = 16, 63 // 1008 connections
	var refused sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	start := time.Now()
	for w := range workers {
		refused.Add(1)
		go func() {
			defer refused.Done()
			for i := range perWorker {
				c, err := net.Dial("unix", path)
				if err != nil {
					errs <- err
					return
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				switch (w + i) % 4 {
				case 0: // random bytes
					c.Write(append([]byte{0x9c}, make([]byte, 512)...))
					io.Copy(io.Discard, c)
				case 1: // a 4 GiB frame
					c.Write(binary.BigEndian.AppendUint32(append([]byte(proto.Magic), byte(proto.TypeHello)), 0xFFFFFFFF))
					io.Copy(io.Discard, c)
				default: // a wrong token, guessed anew each time
					h := goodHello()
					tok := make([]byte, proto.TokenSize)
					binary.BigEndian.PutUint32(tok, uint32(w*perWorker+i))
					h.Token = credential.NewSecret(tok)
					cl := proto.NewClient(c)
					if err := cl.WriteHello(h); err != nil {
						errs <- err
						break
					}
					_, err := cl.ReadCredentials()
					var re *proto.RemoteError
					if !errors.As(err, &re) || re.Code != proto.CodeBadToken {
						errs <- fmt.Errorf("wrong token %d: got %v, want a bad-token error", w*perWorker+i, err)
					}
				}
				c.Close()
			}
		}()
	}
	peakHeap := sampleHeap(5 * time.Millisecond)
	refused.Wait()
	took := time.Since(start)
	peak := peakHeap()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d hostile connections in %v (%.0f/s); heap in use %d KiB before, peak %d KiB",
		workers*perWorker, took.Round(time.Millisecond), float64(workers*perWorker)/took.Seconds(), base.HeapInuse>>10, peak>>10)
	if peak > 64<<20 {
		t.Errorf("heap in use peaked at %d MiB; want < 64 MiB", peak>>20)
	}
	ev.waitFor(t, "every bad token accounted for", func() bool { return ev.droppedWith(ErrBadToken) >= workers*perWorker/2 })
	creds, ack := fetchAndReport(t, path, goodHello())
	if len(creds) != 1 || creds[0].Name != "k" || ack == "" {
		t.Errorf("after the abuse the right guest got %d credential(s), ack %q", len(creds), ack)
	}
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
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 8)})
	for _, tt := range []struct {
		cid  uint32
		want bool
	}{{cid: 7, want: false}, {cid: 3, want: true}} {
		t.Run(fmt.Sprint(tt.cid), func(t *testing.T) {
			path, ev := serve(t, f, func(c *Config) {
				c.ExpectCID = 3
				c.AllowRefetch = true
				c.PeerCID = func(net.Conn) (uint32, bool) { return tt.cid, true }
			})
			if tt.want {
				fetchAndReport(t, path, goodHello())
				return
			}
			c := dial(t, path)
			c.Write([]byte(proto.Magic))
			_, _ = io.Copy(io.Discard, c)
			ev.waitFor(t, "refusal", func() bool { return ev.droppedWith(ErrWrongCID) == 1 })
		})
	}
}

// TestShutdown: cancelling Serve's context ends connections in progress
// (serve's cleanup checks that Serve returns).
func TestShutdown(t *testing.T) {
	f := newFixture(t, nil)
	path, _ := serve(t, f, nil)
	c := dial(t, path)
	c.Write([]byte(proto.Magic[:3]))
}
