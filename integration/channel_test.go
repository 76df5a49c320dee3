package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/fetch"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// shmDir is a temporary folder on tmpfs, where the agent accepts a
// credstore.
func shmDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "vmcred-integration-")
	if err != nil {
		t.Skipf("no writable /dev/shm tmpfs here: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// shortDir is a temporary folder with a short path: a Unix socket path
// must fit in 107 bytes, which t.TempDir's long names can break.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// lockedBuffer is a bytes.Buffer a child's output copier and the test
// may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// background starts a built binary and returns it; the test's cleanup
// kills it if it still runs.
func background(t *testing.T, bin string, env []string, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}

func waitForSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exitCode(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running after %v", filepath.Base(cmd.Path), within)
	}
	return -1
}

// TestChannelEndToEnd is the simulated VM with a channel: the host packs a
// 4 MiB secret (too big for SMBIOS, and over systemd's 1 MiB) with
// --overflow channel into a DMI table that carries only the signed
// manifest and a small secret; `serve` serves the channel on a Unix socket;
// the guest agent reads the table, fetches the big secret over the channel,
// verifies everything against the manifest and writes its credstore; the
// agent's report makes `wait` exit 0.
func TestChannelEndToEnd(t *testing.T) {
	work := shortDir(t)
	secrets := filepath.Join(work, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20)
	rand.Read(big)
	small := []byte("small-secret-" + rand.Text())
	for name, v := range map[string][]byte{"big": big, "small": small} {
		if err := os.WriteFile(filepath.Join(secrets, name), v, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(work, "vm.vsock_5000")
	rt, status, dmi := filepath.Join(work, "run"), filepath.Join(work, "status"), filepath.Join(work, "DMI")

	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "host")); r.code != 0 {
		t.Fatalf("keygen: %d %s", r.code, r.stderr)
	}
	r := run(t, built.host, nil, "pack", "--vm", "demo", "--hypervisor", "dmi", "--out", dmi,
		"--sign-key", filepath.Join(work, "host.key"),
		"--cred", "big=file:"+filepath.Join(secrets, "big"), "--cred", "small=file:"+filepath.Join(secrets, "small"),
		"--overflow", "channel", "--channel", "unix:"+sock, "--runtime-dir", rt)
	if r.code != 0 {
		t.Fatalf("pack: exit %d: %s", r.code, r.stderr)
	}
	if tab, _ := os.ReadFile(dmi); bytes.Contains(tab, big[:64]) || len(tab) > 64<<10 {
		t.Fatalf("the DMI table (%d bytes) carries the big secret", len(tab))
	}

	serve, serveOut := background(t, built.host, nil, "serve", "--vm", "demo", "--listen", "unix:"+sock, "--runtime-dir", rt, "--status-dir", status)
	waitForSocket(t, sock)
	wait, waitOut := background(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", status, "--timeout", "30s")

	store := filepath.Join(shmDir(t), "credstore")
	load := run(t, built.guest, nil, "load", "--dmi-table", dmi, "--trust-key", filepath.Join(work, "host.pub"), "--vm", "demo",
		"--credstore", store, "--status-dir", filepath.Join(work, "guest-status"), "--system-credentials", "",
		"--channel", "unix:"+sock, "--timeout", "10s")
	if load.code != 0 {
		t.Fatalf("load: exit %d\n%s\nserve:\n%s", load.code, load.stderr, serveOut)
	}
	for name, want := range map[string][]byte{"big": big, "small": small} {
		got, err := os.ReadFile(filepath.Join(store, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("credstore %s: %d bytes, want %d exactly (%v)", name, len(got), len(want), err)
		}
	}
	if code := exitCode(t, wait, 30*time.Second); code != 0 {
		t.Fatalf("wait: exit %d: %s", code, waitOut)
	}
	if !strings.Contains(waitOut.String(), "guest demo: 2 credentials verified") {
		t.Errorf("wait printed %q", waitOut)
	}
	st, err := readiness.Read(status, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != readiness.Ready || st.Fetch == nil || len(st.Fetch.Credentials) != 1 || st.Fetch.Credentials[0] != "big" {
		t.Errorf("status %+v", st)
	}
	var guest struct {
		Fetch struct {
			Acknowledged bool     `json:"acknowledged"`
			Received     []string `json:"received"`
		} `json:"fetch"`
	}
	b, _ := os.ReadFile(filepath.Join(work, "guest-status", "status.json"))
	if err := json.Unmarshal(b, &guest); err != nil || !guest.Fetch.Acknowledged {
		t.Errorf("guest status: acknowledged=%v (%v)", guest.Fetch.Acknowledged, err)
	}

	// Nothing the host wrote or said holds a value or the token.
	for _, path := range []string{filepath.Join(rt, hostchannel.StateFile), readiness.Path(status, "demo")} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, small) || bytes.Contains(b, big[:32]) {
			t.Errorf("%s holds a value", path)
		}
	}
	for what, out := range map[string]string{"serve": serveOut.String(), "load": load.stderr + load.stdout, "pack": r.stderr + r.stdout} {
		if strings.Contains(out, string(small)) {
			t.Errorf("%s output holds the small secret", what)
		}
	}

	// A second fetch for the same boot is refused; serve keeps serving
	// and exits 0 on SIGTERM.
	load2 := run(t, built.guest, nil, "load", "--dmi-table", dmi, "--trust-key", filepath.Join(work, "host.pub"),
		"--credstore", filepath.Join(shmDir(t), "credstore"), "--status-dir", filepath.Join(work, "guest-status2"), "--system-credentials", "",
		"--timeout", "2s")
	if load2.code != 1 || !strings.Contains(load2.stderr, "already-fetched") {
		t.Errorf("second load: exit %d, want 1 with already-fetched:\n%s", load2.code, load2.stderr)
	}
	serve.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, serve, 10*time.Second); code != 0 {
		t.Errorf("serve exit %d:\n%s", code, serveOut)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("serve left its socket: %v", err)
	}
	t.Logf("serve's log:\n%s", serveOut)
}

// TestWaitTimeout: no report comes; wait exits 4.
func TestWaitTimeout(t *testing.T) {
	r := run(t, built.host, nil, "wait", "--vm", "nobody", "--status-dir", t.TempDir(), "--timeout", "200ms")
	if r.code != 4 {
		t.Errorf("wait: exit %d, want 4: %s", r.code, r.stderr)
	}
}

// serveChannel runs a host channel server with cfg on a Unix socket in dir
// until the test ends, and returns its address and a context that ends
// with the test.
func serveChannel(tb testing.TB, dir string, cfg hostchannel.Config) (address.Address, context.Context) {
	tb.Helper()
	srv, err := hostchannel.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	a := address.Address{Kind: address.Unix, Path: filepath.Join(dir, "ch.sock")}
	l, err := hostchannel.Listen(a)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	tb.Cleanup(func() { cancel(); <-done })
	return a, ctx
}

// benchState is a serve state with one random credential of n bytes.
func benchState(b *testing.B, n int) (*hostchannel.State, credential.Secret) {
	b.Helper()
	v := make([]byte, n)
	rand.Read(v)
	p := filepath.Join(b.TempDir(), "secret")
	if err := os.WriteFile(p, v, 0o400); err != nil {
		b.Fatal(err)
	}
	tok := credential.NewSecret([]byte(strings.Repeat("t", proto.TokenSize)))
	st, err := hostchannel.NewState("bench", [manifest.NonceSize]byte{1}, tok, "unix:x", time.Now(),
		[]hostchannel.StateCredential{{Name: "disk-key", Size: int64(n), SHA256: credential.NewSecret(v).SHA256(), File: p}})
	if err != nil {
		b.Fatal(err)
	}
	return st, tok
}

// BenchmarkChannel16MiB fetches one 16 MiB credential from the host's
// channel server (host/channel) with the guest's client (guest/fetch) over
// a Unix socket, report and ACK included; MB/s is the credential's bytes.
// The server reads the source file fresh for every fetch, as serve does.
func BenchmarkChannel16MiB(b *testing.B) {
	const n = 16 << 20
	st, tok := benchState(b, n)
	a, ctx := serveChannel(b, shortDir(b), hostchannel.Config{State: func() (*hostchannel.State, error) { return st, nil }, AllowRefetch: true})
	cfg := fetch.Config{Address: a, Token: tok, Nonce: [manifest.NonceSize]byte{1}, AgentVersion: "bench"}
	b.SetBytes(n)
	b.ReportAllocs()
	for b.Loop() {
		fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := fetch.Fetch(fctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if len(s.Credentials) != 1 || s.Credentials[0].Value.Len() != n {
			b.Fatalf("got %d credentials", len(s.Credentials))
		}
		if _, err := s.Report(fctx, proto.Report{Outcome: proto.OutcomeReady, AgentVersion: "bench"}); err != nil {
			b.Fatal(err)
		}
		s.Close()
		fcancel()
	}
}

// TestNotifySenderToServer: the guest's vsock-stream notify sender (here
// over a Unix socket) and the host's server agree: READY=1 is recorded as
// the guest's boot readiness, and the sender returns once the server
// closed.
func TestNotifySenderToServer(t *testing.T) {
	dir := shortDir(t)
	st, err := hostchannel.NewState("vm", [manifest.NonceSize]byte{}, credential.Secret{}, "unix:x", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := readiness.NewRecorder(filepath.Join(dir, "status"), readiness.Status{VM: "vm"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, ctx := serveChannel(t, dir, hostchannel.Config{State: func() (*hostchannel.State, error) { return st, nil }, Events: rec.Events()})
	nctx, ncancel := context.WithTimeout(ctx, 5*time.Second)
	defer ncancel()
	start := time.Now()
	if err := fetch.Notify(nctx, a.String(), []byte("READY=1\nSTATUS=Ready."), nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= 100*time.Millisecond {
		t.Errorf("notify took %v: the server must close at EOF, not after its idle timeout", took)
	}
	// The server closes first and records after: poll.
	var s readiness.Status
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if s, err = readiness.Read(filepath.Join(dir, "status"), "vm"); err == nil && s.Boot != nil {
			break
		}
	}
	if err != nil || s.Boot == nil || !s.Boot.Ready || s.Boot.Status != "Ready." || s.State != readiness.Waiting {
		t.Errorf("status %+v (%v): want boot ready, the VM still waiting for the agent", s.Boot, err)
	}
}
