package integration

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/fetch"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/manifest"
)

// firstLastConn notes when the first and the last bytes arrived.
type firstLastConn struct {
	net.Conn
	first, last time.Time
}

func (c *firstLastConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		now := time.Now()
		if c.first.IsZero() {
			c.first = now
		}
		c.last = now
	}
	return n, err
}

// BenchmarkChannel16MiBPhases is BenchmarkChannel16MiB taken apart, to
// show where a fetch's time goes (BENCHMARKS.md): ms-first-byte runs from
// the dial to the first byte of the host's answer (the host opens the
// source and checks its size; it streams the value while it hashes it,
// holding back the last 64 KiB until the SHA-256 matches), ms-transfer
// from there to Fetch's return (the 16 MiB read, hashed and crossing the
// socket into the guest's buffer), ms-report the REPORT and its ACK, ms-close the guest
// wiping its copy.
func BenchmarkChannel16MiBPhases(b *testing.B) {
	const n = 16 << 20
	st, tok := benchState(b, n)
	a, ctx := serveChannel(b, shortDir(b), hostchannel.Config{State: func() (*hostchannel.State, error) { return st, nil }, AllowRefetch: true})

	var conn *firstLastConn
	var dialed time.Time
	cfg := fetch.Config{Address: a, Token: tok, Nonce: [manifest.NonceSize]byte{1}, AgentVersion: "bench",
		Dial: func(ctx context.Context, a address.Address) (net.Conn, error) {
			dialed = time.Now()
			c, err := fetch.Dial(ctx, a)
			if err != nil {
				return nil, err
			}
			conn = &firstLastConn{Conn: c}
			return conn, nil
		}}
	var first, transfer, report, closing time.Duration
	b.SetBytes(n)
	for b.Loop() {
		s, err := fetch.Fetch(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		fetched := time.Now()
		if len(s.Credentials) != 1 || s.Credentials[0].Value.Len() != n {
			b.Fatalf("got %d credentials", len(s.Credentials))
		}
		if _, err := s.Report(ctx, proto.Report{Outcome: proto.OutcomeReady, AgentVersion: "bench"}); err != nil {
			b.Fatal(err)
		}
		reported := time.Now()
		s.Close()
		closed := time.Now()
		first += conn.first.Sub(dialed)
		transfer += fetched.Sub(conn.first)
		report += reported.Sub(fetched)
		closing += closed.Sub(reported)
	}
	per := func(d time.Duration) float64 { return float64(d) / float64(b.N) / 1e6 }
	b.ReportMetric(per(first), "ms-first-byte")
	b.ReportMetric(per(transfer), "ms-transfer")
	b.ReportMetric(per(report), "ms-report")
	b.ReportMetric(per(closing), "ms-close")
}

// TestChannelSourceChangedStreamed: the host streams a large channel
// credential while it hashes it, holding back its end until the SHA-256
// matches the manifest. A source changed after pack (same size, one byte)
// is therefore never delivered whole: the agent's load fails after its
// retries, naming the credential; serve logs the mismatch naming the
// credential and the file; and nothing reaches the guest's credstore.
// (It lives here, next to BenchmarkChannel16MiB, which measures the
// streaming it guards.)
func TestChannelSourceChangedStreamed(t *testing.T) {
	work, shm := faultDirs(t)
	env := faultEnv(work)
	host, guest := built.host, built.guest
	mustRunOK(t, "keygen", host, env, "keygen", "--out", filepath.Join(work, "k"))
	pub := filepath.Join(work, "k.pub")

	const size = 16 << 20
	cur := map[string][]byte{"disk-key": randomBytes(size), "api-key": randomText()}
	ns := append(secretNeedles("credential", "disk-key", cur["disk-key"]), secretNeedles("credential", "api-key", cur["api-key"])...)
	sock, rt, dmi := filepath.Join(work, "serve.sock"), filepath.Join(work, "rt"), filepath.Join(work, "new.dmi")
	srcDir := filepath.Join(work, "src")
	mustRunOK(t, "pack", host, env, slices.Concat([]string{"pack", "--vm", "vm1", "--hypervisor", "dmi", "--out", dmi, "--sign-key", filepath.Join(work, "k.key"),
		"--overflow", "channel", "--channel", "unix:" + sock, "--runtime-dir", rt}, writeSecretFiles(t, srcDir, cur))...)
	if st, err := os.ReadFile(filepath.Join(rt, "vmcred-serve.json")); err != nil || !strings.Contains(string(st), `"disk-key"`) {
		t.Fatalf("disk-key does not go by channel (%v)", err)
	}
	// After pack: one byte of the 16 MiB source changes, its size does not.
	src := filepath.Join(srcDir, "disk-key")
	changed := slices.Clone(cur["disk-key"])
	changed[size/2] ^= 1
	if err := os.Chmod(src, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	ns = append(ns, secretNeedles("credential", "disk-key (changed)", changed)...)

	serve := startProc(t, "serve", env, nil, host, "serve", "--vm", "vm1", "--listen", "unix:"+sock, "--runtime-dir", rt, "--status-dir", filepath.Join(work, "host-status"))
	waitForSocket(t, sock)
	store := filepath.Join(shm, "credstore")
	load := startProc(t, "load", env, nil, guest, "load", "--dmi-table", dmi, "--trust-key", pub, "--vm", "vm1", "--credstore", store,
		"--status-dir", filepath.Join(work, "gst"), "--system-credentials", "", "--channel", "unix:"+sock, "--timeout", "3s")
	code := load.wait(t, 15*time.Second)
	serve.cmd.Process.Signal(syscall.SIGTERM)
	serve.wait(t, 10*time.Second)
	loadErr, serveErr := string(load.stderr.Bytes()), string(serve.stderr.Bytes())
	if code == 0 {
		t.Fatalf("load succeeded with a source changed since pack")
	}
	if code != 1 && code != 4 {
		t.Errorf("load: exit %d, want 1 (fetch failed) or 4 (timeout)", code)
	}
	if !strings.Contains(loadErr, "disk-key") {
		t.Errorf("the failure does not name disk-key: %s", redact(loadErr, ns))
	}
	if !strings.Contains(serveErr, "disk-key") || !strings.Contains(serveErr, src) || !strings.Contains(serveErr, "changed since pack") {
		t.Errorf("serve did not log the mismatch naming the credential and its file: %s", redact(serveErr, ns))
	}
	if strings.Contains(serveErr, "channel credential(s)") {
		t.Errorf("serve logged the credentials as sent")
	}
	if _, err := os.Stat(store); !errors.Is(err, fs.ErrNotExist) {
		files, temps := credstoreState(t, store)
		if len(files) > 0 || len(temps) > 0 {
			t.Errorf("the failed load wrote to the credstore: %d credential(s), %d temporary file(s)", len(files), len(temps))
		}
	}
	for what, b := range map[string]string{"serve": serveErr, "load": loadErr} {
		if hits := leakHits([]byte(b), ns); len(hits) > 0 {
			t.Errorf("LEAK: %s in the output of %s", hits[0], what)
		}
	}
}
