package push

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	hybridvsock "github.com/vmcred/vmcred/host/push/hybridtest"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// fakeAgent scripts the guest agent's side with shared/channel and
// shared/manifest (host code may not import guest packages): a fresh
// challenge per connection, the manifest's signature and challenge
// checked, the values counted, a ready report. busy makes the first n
// connections answer "unavailable".
type fakeAgent struct {
	pub      ed25519.PublicKey
	busy     int32
	sessions atomic.Int32
	got      chan []proto.Credential
}

func (f *fakeAgent) serve(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.handle(c)
		}
	}()
}

func (f *fakeAgent) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	conn := proto.NewAgent(c)
	if f.sessions.Add(1) <= f.busy {
		_ = conn.WriteError(proto.CodeUnavailable, "another session is active")
		return
	}
	var nonce [proto.ChallengeSize]byte
	_, _ = rand.Read(nonce[:])
	if conn.WriteChallenge(proto.Challenge{Nonce: nonce, Generation: 4, AgentVersion: "fake"}) != nil {
		return
	}
	env, err := conn.ReadManifest()
	if err != nil {
		return
	}
	m, ver, err := manifest.Open(env, []ed25519.PublicKey{f.pub})
	if err != nil || !ver.Trusted || m.Challenge != nonce || m.Generation != 5 || m.VM != "web" {
		_ = conn.WriteReport(proto.Report{Outcome: proto.OutcomeFailed, Summary: "refused"})
		return
	}
	creds, err := conn.ReadCredentials()
	if err != nil {
		return
	}
	f.got <- creds
	_ = conn.WriteReport(proto.Report{Outcome: proto.OutcomeReady, Summary: "ok", Generation: m.Generation})
	_, _ = conn.ReadAck()
}

func request(t *testing.T) (Request, ed25519.PublicKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return Request{VM: "web", Key: priv, IssuedAt: time.Unix(1_800_000_000, 0), Credentials: []Credential{
		{Name: "api-key", Value: credential.NewSecret([]byte("s3cr3t")), Delivery: manifest.DeliveryChannel},
		{Name: "from-firmware", Value: credential.NewSecret([]byte("fw")), Delivery: manifest.DeliverySMBIOS},
	}}, pub
}

func TestPushUnix(t *testing.T) {
	req, pub := request(t)
	f := &fakeAgent{pub: pub, got: make(chan []proto.Credential, 1)}
	path := filepath.Join(t.TempDir(), "agent.sock")
	f.serve(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := Push(ctx, Config{Address: address.Address{Kind: address.Unix, Path: path}, Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if out.Report.Outcome != proto.OutcomeReady || out.Generation != 5 || !out.Acked || out.Attempts != 1 {
		t.Errorf("outcome %+v", out)
	}
	got := <-f.got
	if len(got) != 1 || got[0].Name != "api-key" {
		t.Errorf("sent %d credentials (%v); want only the one for the session", len(got), out.Sent)
	}
}

// TestPushBusyRetries: an agent in another session says so; push dials
// again and the next session goes through.
func TestPushBusyRetries(t *testing.T) {
	req, pub := request(t)
	f := &fakeAgent{pub: pub, busy: 2, got: make(chan []proto.Credential, 1)}
	path := filepath.Join(t.TempDir(), "agent.sock")
	f.serve(t, path)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := Push(ctx, Config{Address: address.Address{Kind: address.Unix, Path: path}, Request: req})
	if err != nil || out.Report.Outcome != proto.OutcomeReady || out.Attempts != 3 {
		t.Fatalf("push: %v, %d attempts", err, out.Attempts)
	}
}

// TestPushHybridWhileBooting: through the hybrid-vsock stand-in, whose VMM
// closes a CONNECT while nothing listens on the guest port (the guest is
// booting): push retries with backoff and goes through once the agent
// listens.
func TestPushHybridWhileBooting(t *testing.T) {
	req, pub := request(t)
	dir := t.TempDir()
	mux, err := hybridvsock.Listen(filepath.Join(dir, "v.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	f := &fakeAgent{pub: pub, got: make(chan []proto.Credential, 1)}
	agentSock := filepath.Join(dir, "guest-730.sock")
	f.serve(t, agentSock)
	go func() {
		for mux.Refused.Load() < 3 {
			time.Sleep(10 * time.Millisecond)
		}
		mux.Route(730, agentSock)
	}()
	a, err := address.Parse("hybrid:" + filepath.Join(dir, "v.sock") + ":730")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := Push(ctx, Config{Address: a, Request: req})
	if err != nil || out.Report.Outcome != proto.OutcomeReady {
		t.Fatalf("push: %v %+v", err, out.Report)
	}
	if out.Attempts < 4 || mux.Refused.Load() < 3 {
		t.Errorf("%d attempts, %d refused; want the refusals retried", out.Attempts, mux.Refused.Load())
	}
}

// TestPushTimeout: nothing ever listens; push gives up when ctx ends.
func TestPushTimeout(t *testing.T) {
	req, _ := request(t)
	dir := t.TempDir()
	mux, err := hybridvsock.Listen(filepath.Join(dir, "v.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	a, _ := address.Parse("hybrid:" + filepath.Join(dir, "v.sock") + ":730")
	// Long enough for at least one refused dial on a loaded machine; the
	// deadline, not a count of tries, ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := Push(ctx, Config{Address: a, Request: req}); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrRefused) {
		t.Errorf("push = %v, want the deadline and the last refusal", err)
	}
}

// TestHybridBadReply: a VMM that answers anything but "OK <port>" is an
// error at once, not retried.
func TestHybridBadReply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 64)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte("NOPE\n"))
			c.Close()
		}
	}()
	a, _ := address.Parse("hybrid:" + path + ":730")
	_, err = DialOnce(context.Background(), a)
	if err == nil || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `answered "NOPE"`) {
		t.Errorf("DialOnce = %v", err)
	}
}

// TestCheckSocketPath: the host never sends values to a socket in a folder
// other users can write (they could have put their own socket there), nor
// to an abstract name.
func TestCheckSocketPath(t *testing.T) {
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := CheckSocketPath(filepath.Join(open, "v.sock")); err == nil {
		t.Error("a 0777 folder was accepted")
	}
	sticky := t.TempDir()
	if err := os.Chmod(sticky, os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}
	if err := CheckSocketPath(filepath.Join(sticky, "v.sock")); err == nil {
		t.Error("a sticky 1777 folder was accepted: another user could create the socket first")
	}
	if err := CheckSocketPath(filepath.Join(t.TempDir(), "v.sock")); err != nil {
		t.Errorf("a private folder: %v", err)
	}
	if err := CheckSocketPath("@abstract"); err == nil {
		t.Error("an abstract name was accepted")
	}
	a, _ := address.Parse("unix:" + filepath.Join(open, "v.sock"))
	if _, err := DialOnce(context.Background(), a); err == nil || !strings.Contains(err.Error(), "other users could put") {
		t.Errorf("DialOnce into a 0777 folder = %v", err)
	}
}
