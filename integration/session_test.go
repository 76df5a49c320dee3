package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	hybridvsock "github.com/vmcred/vmcred/host/push/hybridtest"
	"github.com/vmcred/vmcred/host/readiness"
	proto "github.com/vmcred/vmcred/shared/channel"
)

// simVM is a simulated VM: the real vmcred-guest agent listening on a Unix
// socket in a private folder (standing for its privileged vsock port), a
// credstore on tmpfs, and a signing key pair.
type simVM struct {
	work, sock, store, status, hostStatus, key, pub string
	agent                                           *watchedProc
}

func startSimVM(t *testing.T, extra ...string) *simVM {
	t.Helper()
	work := shortDir(t)
	v := &simVM{work: work, store: filepath.Join(shmDir(t), "credstore"), status: filepath.Join(work, "gst"), hostStatus: filepath.Join(work, "host-status")}
	agentDir := filepath.Join(work, "agent")
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	v.sock = filepath.Join(agentDir, "a.sock")
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "k")); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	v.key, v.pub = filepath.Join(work, "k.key"), filepath.Join(work, "k.pub")
	args := append([]string{"agent", "--listen", "unix:" + v.sock, "--dmi-table", filepath.Join(work, "none.dmi"), "--trust-key", v.pub, "--vm", "demo",
		"--credstore", v.store, "--status-dir", v.status, "--system-credentials", ""}, extra...)
	v.agent = startProc(t, "agent", nil, nil, built.guest, args...)
	waitForSocket(t, v.sock)
	return v
}

func (v *simVM) push(t *testing.T, connect string, vals map[string][]byte, extra ...string) result {
	t.Helper()
	dir := filepath.Join(v.work, "src-"+rand.Text()[:6])
	args := append([]string{"push", "--vm", "demo", "--connect", connect, "--sign-key", v.key, "--status-dir", v.hostStatus, "--timeout", "15s"}, extra...)
	return run(t, built.host, nil, append(args, writeSecretFiles(t, dir, vals)...)...)
}

func (v *simVM) stop(t *testing.T) {
	t.Helper()
	v.agent.cmd.Process.Signal(syscall.SIGTERM)
	if code := v.agent.wait(t, 10*time.Second); code != 0 {
		t.Errorf("agent: exit %d after SIGTERM: %s", code, v.agent.stderr.Bytes())
	}
}

// TestSessionEndToEnd: the host pushes to the agent directly and through
// the hybrid-vsock stand-in (cloud-hypervisor, Firecracker) while the
// guest is still booting (the VMM refuses CONNECT until the agent
// listens); the agent writes its credstore and reports on the same
// connection; `wait` returns 0; a second push is generation 2.
func TestSessionEndToEnd(t *testing.T) {
	v := startSimVM(t)
	vals := map[string][]byte{"api-key": randomText(), "big": randomBytes(4 << 20)}
	wait, waitOut := background(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", v.hostStatus, "--timeout", "30s")
	if r := v.push(t, "unix:"+v.sock, vals); r.code != 0 {
		t.Fatalf("push: exit %d: %s", r.code, r.stderr)
	}
	if code := exitCode(t, wait, 30*time.Second); code != 0 || !strings.Contains(waitOut.String(), "2 credentials verified (generation 1)") {
		t.Fatalf("wait: exit %d: %s", code, waitOut)
	}
	for n, want := range vals {
		if got, err := os.ReadFile(filepath.Join(v.store, n)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("credstore %s differs (%v)", n, err)
		}
	}
	for _, f := range []string{readiness.Path(v.hostStatus, "demo"), filepath.Join(v.status, "status.json"), filepath.Join(v.status, "manifest")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v (mode %v): want a file only its owner reads", f, err, fi.Mode())
		}
	}

	// Through the hybrid-vsock stand-in: the VMM's socket, CONNECT 730.
	mux, err := hybridvsock.Listen(filepath.Join(v.work, "v.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	go func() {
		for mux.Refused.Load() < 2 {
			time.Sleep(10 * time.Millisecond)
		}
		mux.Route(730, v.sock)
	}()
	vals["api-key"] = randomText()
	if r := v.push(t, "hybrid:"+filepath.Join(v.work, "v.sock")+":730", vals); r.code != 0 {
		t.Fatalf("push through hybrid vsock: exit %d: %s", r.code, r.stderr)
	}
	st, err := readiness.Read(v.hostStatus, "demo")
	if err != nil || st.State != readiness.Ready || st.Generation != 2 || st.Session == nil || st.Session.Attempts < 3 {
		t.Errorf("status after the hybrid push: %+v (%v)", st, err)
	}
	if got, _ := os.ReadFile(filepath.Join(v.store, "api-key")); !bytes.Equal(got, vals["api-key"]) {
		t.Errorf("the second push did not replace api-key")
	}
	v.stop(t)
}

// TestAttackNoSecretToOthers (issue 14, attack 1): a process that connects
// to the agent first gets a challenge and nothing else; and the values go
// only where the host dials, so a process that is not the agent never
// receives them. Here the "attacker" connects to the agent's socket
// before the host does, and stays connected.
func TestAttackNoSecretToOthers(t *testing.T) {
	v := startSimVM(t)
	secret := randomText()
	c, err := net.Dial("unix", v.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := v.push(t, "unix:"+v.sock, map[string][]byte{"api-key": secret})
	if r.code != 0 {
		t.Fatalf("push with an early connector on the agent: exit %d: %s", r.code, r.stderr)
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	var got bytes.Buffer
	got.ReadFrom(c)
	b := got.Bytes()
	if !bytes.HasPrefix(b, []byte(proto.Magic)) {
		t.Fatalf("the early connector got %d bytes, not a challenge", len(b))
	}
	if bytes.Contains(b, secret) || len(b) > len(proto.Magic)+5+proto.MaxChallengeSize {
		t.Errorf("the early connector got more than a challenge (%d bytes)", len(b))
	}
	v.stop(t)
}

// TestAttackForgedReport (issue 14, attack 2): after a refused session, a
// guest process that writes "READY=1" to the host's notify socket and
// sends a REPORT saying ready changes nothing the host recorded: wait
// still exits 1. Readiness comes only from the session the host dialed.
func TestAttackForgedReport(t *testing.T) {
	v := startSimVM(t)
	nsock := filepath.Join(v.work, "notify.vsock_9")
	serve, serveOut := background(t, built.host, nil, "serve", "--vm", "demo", "--listen", "unix:"+nsock)
	waitForSocket(t, nsock)
	// A refused session: the manifest is for another VM.
	r := run(t, built.host, nil, "push", "--vm", "other", "--connect", "unix:"+v.sock, "--sign-key", v.key, "--status-dir", v.hostStatus, "--timeout", "10s", "--static", "a=b")
	if r.code != 1 {
		t.Fatalf("push for another VM: exit %d, want 1: %s", r.code, r.stderr)
	}
	// The forgeries, to every socket a guest process can reach.
	for _, payload := range [][]byte{
		[]byte("READY=1\nSTATUS=vmcred: all verified"),
		append([]byte(proto.Magic), mustReport(t)...),
	} {
		if c, err := net.Dial("unix", nsock); err == nil {
			c.Write(payload)
			c.(*net.UnixConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			c.Read(make([]byte, 1))
			c.Close()
		}
		if c, err := net.Dial("unix", v.sock); err == nil {
			c.Write(payload)
			c.Close()
		}
	}
	if w := run(t, built.host, nil, "wait", "--vm", "other", "--status-dir", v.hostStatus, "--timeout", "2s"); w.code != 1 {
		t.Errorf("wait after the forgeries: exit %d, want 1 (failed): %s", w.code, w.stdout)
	}
	serve.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, serve, 10*time.Second); code != 0 {
		t.Errorf("serve: exit %d: %s", code, serveOut)
	}
	v.stop(t)
}

func mustReport(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := proto.NewHost(rw{nil, &b}).WriteReport(proto.Report{Outcome: proto.OutcomeReady, Summary: "forged", AgentVersion: "x"}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestAttackIdleConnections (issue 14, attack 4): 1000 connections to the
// agent that say nothing do not keep the host's session out.
func TestAttackIdleConnections(t *testing.T) {
	v := startSimVM(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 1000 {
		c, err := net.Dial("unix", v.sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if r := v.push(t, "unix:"+v.sock, map[string][]byte{"api-key": randomText()}); r.code != 0 {
		t.Fatalf("push behind 1000 idle connections: exit %d: %s", r.code, r.stderr)
	}
	v.stop(t)
}

// TestAttackReportFlood (issue 14, attack 5): a hostile peer at the
// address the host dials answers with a failed REPORT of 4096 entries
// with long error texts, to many pushes in a row. Each push reads one
// bounded frame, logs a bounded number of lines, writes a bounded status
// file, and stays within bounded memory.
func TestAttackReportFlood(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "fake-agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var creds []proto.CredentialReport
	for i := range proto.MaxReportEntries {
		creds = append(creds, proto.CredentialReport{Name: "c" + hex.EncodeToString([]byte{byte(i >> 8), byte(i)}), Verification: proto.VerifyMismatch,
			Error: strings.Repeat("e", proto.MaxErrorTextLen)})
	}
	rep := proto.Report{Outcome: proto.OutcomeFailed, Summary: strings.Repeat("s", proto.MaxTextLen), AgentVersion: "hostile", Credentials: creds}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				conn := proto.NewAgent(c)
				var n [proto.ChallengeSize]byte
				rand.Read(n[:])
				if conn.WriteChallenge(proto.Challenge{Nonce: n, AgentVersion: "hostile"}) != nil {
					return
				}
				if _, err := conn.ReadManifest(); err != nil {
					return
				}
				conn.WriteReport(rep)
				conn.ReadCredentials()
			}()
		}
	}()
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(dir, "k")); r.code != 0 {
		t.Fatal(r.stderr)
	}
	status := filepath.Join(dir, "status")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var maxRSS int64
	for i := range 5 {
		cmd := commandContext(ctx, built.host, "push", "--vm", "demo", "--connect", "unix:"+sock, "--sign-key", filepath.Join(dir, "k.key"), "--status-dir", status, "--timeout", "10s", "--static", "a=b")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Fatalf("push %d against the hostile agent: exit %d (%v): %s", i, code, err, out.String()[:min(out.Len(), 2000)])
		}
		if lines := strings.Count(out.String(), "\n"); lines > 40 {
			t.Errorf("push %d logged %d lines for one hostile report", i, lines)
		}
		if out.Len() > 64<<10 {
			t.Errorf("push %d logged %d bytes for one hostile report", i, out.Len())
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			maxRSS = max(maxRSS, ru.Maxrss)
		}
	}
	if maxRSS > 128<<10 { // KiB; the attack on the old server grew it past 600 MB
		t.Errorf("push peaked at %d MiB of memory against a 4096-entry report", maxRSS>>10)
	}
	if fi, err := os.Stat(readiness.Path(status, "demo")); err != nil || fi.Size() > 8<<20 {
		t.Errorf("status file: %v, %d bytes", err, fi.Size())
	}
	t.Logf("push against a hostile 4096-entry report: max RSS %d MiB", maxRSS>>10)
}

// TestAttackReplayedManifest: a session manifest recorded from one
// connection (here: the one the agent saved) and played back on another
// is refused, and nothing is written.
func TestAttackReplayedManifest(t *testing.T) {
	v := startSimVM(t)
	vals := map[string][]byte{"api-key": randomText()}
	if r := v.push(t, "unix:"+v.sock, vals); r.code != 0 {
		t.Fatalf("push: %s", r.stderr)
	}
	recorded, err := os.ReadFile(filepath.Join(v.status, "manifest"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", v.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := proto.ReadMagic(c); err != nil {
		t.Fatal(err)
	}
	h := proto.NewHost(c)
	if _, err := h.ReadChallenge(); err != nil {
		t.Fatal(err)
	}
	if err := h.WriteManifest(recorded); err != nil {
		t.Fatal(err)
	}
	rep, err := h.ReadReport()
	if err != nil || rep.Outcome != proto.OutcomeFailed || !strings.Contains(rep.Summary, "not signed for this session") {
		t.Errorf("replayed manifest: %v %s %q", err, rep.Outcome, rep.Summary)
	}
	sum := sha256.Sum256(vals["api-key"])
	if got, _ := os.ReadFile(filepath.Join(v.store, "api-key")); sha256.Sum256(got) != sum {
		t.Errorf("the credstore changed")
	}
	v.stop(t)
}

// rw joins a reader and a writer.
type rw struct {
	io.Reader
	io.Writer
}

// commandContext runs bin with a clean environment and a soft memory
// limit for the Go runtime (GOMEMLIMIT): the garbage collector then works
// to stay under it however starved of CPU the test machine is, so peak RSS
// measures what the process keeps, not how late its collector ran.
func commandContext(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "GOMEMLIMIT=48MiB"}
	return cmd
}
