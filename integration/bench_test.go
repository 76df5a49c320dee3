package integration

import (
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/fetch"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
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
// the dial to the first byte of the host's answer (the host reads the
// source and checks its SHA-256 before it may answer), ms-transfer from
// there to Fetch's return (the 16 MiB crossing the socket into the
// guest's buffer), ms-report the REPORT and its ACK, ms-close the guest
// wiping its copy.
func BenchmarkChannel16MiBPhases(b *testing.B) {
	const n = 16 << 20
	v := make([]byte, n)
	rand.Read(v)
	dir, err := os.MkdirTemp("", "vc-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "secret")
	if err := os.WriteFile(src, v, 0o400); err != nil {
		b.Fatal(err)
	}
	tok := credential.NewSecret([]byte(strings.Repeat("t", proto.TokenSize)))
	st, err := hostchannel.NewState("bench", [manifest.NonceSize]byte{1}, tok, "unix:x", time.Now(),
		[]hostchannel.StateCredential{{Name: "disk-key", Size: n, SHA256: credential.NewSecret(v).SHA256(), File: src}})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := hostchannel.New(hostchannel.Config{State: func() (*hostchannel.State, error) { return st, nil }, AllowRefetch: true})
	if err != nil {
		b.Fatal(err)
	}
	a := address.Address{Kind: address.Unix, Path: filepath.Join(dir, "ch.sock")}
	l, err := hostchannel.Listen(a)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	defer func() { cancel(); <-done }()

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
