package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
)

const canaryToken = "TOKEN-CANARY-0123456789abcdefghi"

// fakeHost scripts the host's side of each connection: answer gets the
// connection number (from 0) and the HELLO and returns the credentials to
// send, or a refusal; then the host reads the REPORT and ACKs it, unless
// hangUp says to drop the connection after the answer.
type fakeHost struct {
	answer func(n int, h proto.Hello) ([]proto.Credential, *proto.RemoteError)
	hangUp func(n int) bool

	mu      sync.Mutex
	hellos  []proto.Hello
	reports []proto.Report
}

func (f *fakeHost) serve(t *testing.T, l net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				f.conversation(n, c)
			}()
		}
	}()
}

func (f *fakeHost) conversation(n int, c net.Conn) {
	if err := proto.ReadMagic(c); err != nil {
		return
	}
	s := proto.NewServer(c)
	h, err := s.ReadHello()
	if err != nil {
		return
	}
	f.mu.Lock()
	f.hellos = append(f.hellos, h)
	f.mu.Unlock()
	creds, re := f.answer(n, h)
	if re != nil {
		s.WriteError(re.Code, re.Text)
	} else {
		s.WriteCredentials(creds)
	}
	if f.hangUp != nil && f.hangUp(n) {
		return
	}
	r, err := s.ReadReport()
	if err != nil {
		return
	}
	f.mu.Lock()
	f.reports = append(f.reports, r)
	f.mu.Unlock()
	s.WriteAck("ok " + r.Outcome.String())
}

func socketPath(t *testing.T) string { return filepath.Join(t.TempDir(), "host.sock") }

func listen(t *testing.T, path string) net.Listener {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func testConfig(path string) Config {
	return Config{
		Address:    address.Address{Kind: address.Unix, Path: path},
		Token:      credential.NewSecret([]byte(canaryToken)),
		Nonce:      [16]byte{9},
		BootID:     "boot-1",
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
}

func secret(s string) credential.Secret { return credential.NewSecret([]byte(s)) }

func TestFetchAndReport(t *testing.T) {
	path := socketPath(t)
	host := &fakeHost{answer: func(int, proto.Hello) ([]proto.Credential, *proto.RemoteError) {
		return []proto.Credential{{Name: "db", Value: secret("pw-0123")}}, nil
	}}
	host.serve(t, listen(t, path))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Fetch(ctx, testConfig(path))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Credentials) != 1 || s.Credentials[0].Name != "db" || string(s.Credentials[0].Value.Reveal()) != "pw-0123" {
		t.Fatalf("got %d credentials", len(s.Credentials))
	}
	ack, err := s.Report(ctx, proto.Report{Outcome: proto.OutcomeReady, AgentVersion: "t"})
	if err != nil || ack != "ok ready" {
		t.Fatalf("Report: %q, %v", ack, err)
	}
	host.mu.Lock()
	defer host.mu.Unlock()
	if len(host.hellos) != 1 || host.hellos[0].BootID != "boot-1" || host.hellos[0].BootNonce != [16]byte{9} || string(host.hellos[0].Token.Reveal()) != canaryToken {
		t.Errorf("hello as received: %+v", host.hellos)
	}
}

// TestFetchRetries: no server at first, then a busy one, then success.
func TestFetchRetries(t *testing.T) {
	path := socketPath(t)
	host := &fakeHost{answer: func(n int, _ proto.Hello) ([]proto.Credential, *proto.RemoteError) {
		if n < 2 {
			return nil, &proto.RemoteError{Code: proto.CodeUnavailable, Text: "busy"}
		}
		return []proto.Credential{{Name: "k", Value: secret("v")}}, nil
	}}
	go func() {
		time.Sleep(200 * time.Millisecond)
		host.serve(t, listen(t, path))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Fetch(ctx, testConfig(path))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Attempts < 4 {
		t.Errorf("%d attempts; want the dial failures and 2 refusals before success", s.Attempts)
	}
}

// TestFetchPermanentRefusal: a refusal retrying cannot fix ends the fetch
// at once, and the session still carries the REPORT.
func TestFetchPermanentRefusal(t *testing.T) {
	path := socketPath(t)
	host := &fakeHost{answer: func(int, proto.Hello) ([]proto.Credential, *proto.RemoteError) {
		return nil, &proto.RemoteError{Code: proto.CodeAlreadyFetched, Text: "fetched already"}
	}}
	host.serve(t, listen(t, path))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	s, err := Fetch(ctx, testConfig(path))
	var re *proto.RemoteError
	if !errors.As(err, &re) || re.Code != proto.CodeAlreadyFetched || s == nil {
		t.Fatalf("got %v, session %v; want already-fetched with a session", err, s != nil)
	}
	defer s.Close()
	if time.Since(start) > time.Second || s.Attempts != 1 {
		t.Errorf("%d attempts in %v; want one, at once", s.Attempts, time.Since(start))
	}
	if strings.Contains(err.Error(), canaryToken) {
		t.Error("error repeats the token")
	}
	if ack, err := s.Report(ctx, proto.Report{Outcome: proto.OutcomeFailed, AgentVersion: "t"}); err != nil || ack != "ok failed" {
		t.Fatalf("Report: %q, %v", ack, err)
	}
}

// TestFetchBadToken: the host refuses the token and takes no report: no
// session, no retries.
func TestFetchBadToken(t *testing.T) {
	path := socketPath(t)
	host := &fakeHost{answer: func(int, proto.Hello) ([]proto.Credential, *proto.RemoteError) {
		return nil, &proto.RemoteError{Code: proto.CodeBadToken, Text: "no"}
	}, hangUp: func(int) bool { return true }}
	host.serve(t, listen(t, path))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	s, err := Fetch(ctx, testConfig(path))
	var re *proto.RemoteError
	if s != nil || !errors.As(err, &re) || re.Code != proto.CodeBadToken {
		t.Fatalf("got %v, session %v; want bad-token and no session", err, s != nil)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("took %v", took)
	}
}

// TestFetchTimeout: nobody listens; the fetch gives up at the deadline.
func TestFetchTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	s, err := Fetch(ctx, testConfig(socketPath(t)))
	if s != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v (session %v), want a deadline and no session", err, s != nil)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("gave up after %v", took)
	}
}

// TestReportReconnects: the connection broke after CREDENTIALS; the
// REPORT goes on a new one (HELLO again, whose answer is ignored).
func TestReportReconnects(t *testing.T) {
	path := socketPath(t)
	host := &fakeHost{
		answer: func(n int, _ proto.Hello) ([]proto.Credential, *proto.RemoteError) {
			if n == 0 {
				return []proto.Credential{{Name: "k", Value: secret("v")}}, nil
			}
			return nil, &proto.RemoteError{Code: proto.CodeAlreadyFetched}
		},
		hangUp: func(n int) bool { return n == 0 },
	}
	host.serve(t, listen(t, path))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Fetch(ctx, testConfig(path))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ack, err := s.Report(ctx, proto.Report{Outcome: proto.OutcomeReady, AgentVersion: "t"})
	if err != nil || ack != "ok ready" {
		t.Fatalf("Report: %q, %v", ack, err)
	}
	host.mu.Lock()
	defer host.mu.Unlock()
	if len(host.hellos) != 2 || len(host.reports) != 1 {
		t.Errorf("%d hellos, %d reports; want 2 and 1", len(host.hellos), len(host.reports))
	}
}

// TestTokenlessHello: a manifest without a token sends 32 zero bytes.
func TestTokenlessHello(t *testing.T) {
	path := socketPath(t)
	host := &fakeHost{answer: func(int, proto.Hello) ([]proto.Credential, *proto.RemoteError) { return nil, nil }}
	host.serve(t, listen(t, path))
	cfg := testConfig(path)
	cfg.Token = credential.Secret{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Fetch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	host.mu.Lock()
	defer host.mu.Unlock()
	if !bytes.Equal(host.hellos[0].Token.Reveal(), make([]byte, proto.TokenSize)) {
		t.Error("token is not 32 zero bytes")
	}
}

// TestNotify sends as systemd ≥ 256 does: write, half-close, wait for EOF.
func TestNotify(t *testing.T) {
	tests := []struct {
		name     string
		receiver func(c net.Conn) // after reading the message
		want     error
		timeout  bool
	}{
		{name: "receiver closes", receiver: func(c net.Conn) {}},
		{name: "receiver answers", receiver: func(c net.Conn) { c.Write([]byte("?")) }, want: ErrNotifyReply},
		{name: "receiver never closes", receiver: func(c net.Conn) { time.Sleep(time.Second) }, timeout: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := socketPath(t)
			l := listen(t, path)
			defer l.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(io.LimitReader(c, 4097))
				got <- b
				tt.receiver(c)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := Notify(ctx, "unix:"+path, []byte("READY=1\nSTATUS=vmcred: 2 credentials"), nil)
			switch {
			case tt.timeout && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, net.ErrClosed):
				t.Errorf("got %v, want the deadline", err)
			case !tt.timeout && !errors.Is(err, tt.want) && !(tt.want == nil && err == nil):
				t.Errorf("got %v, want %v", err, tt.want)
			}
			if b := <-got; string(b) != "READY=1\nSTATUS=vmcred: 2 credentials" {
				t.Errorf("receiver got %q", b)
			}
		})
	}
}

func TestNotifyRefusesDatagramAddresses(t *testing.T) {
	dialed := false
	dial := func(context.Context, address.Address) (net.Conn, error) { dialed = true; return nil, errors.New("no") }
	for _, s := range []string{"vsock-dgram:2:1", "vsock-seqpacket:2:1", "/run/systemd/notify"} {
		if err := Notify(context.Background(), s, []byte("READY=1"), dial); err == nil {
			t.Errorf("%s: accepted", s)
		}
	}
	if dialed {
		t.Error("dialed an address it should refuse")
	}
	if !IsVsockNotifySocket("vsock-stream:2:9") || IsVsockNotifySocket("/run/systemd/notify") {
		t.Error("IsVsockNotifySocket")
	}
}
