// Package push is the host end of vmcred's session (DESIGN §8): it dials
// the guest agent on its privileged vsock port — directly over AF_VSOCK
// (QEMU vhost-vsock), through the hybrid-vsock Unix socket of
// cloud-hypervisor or Firecracker (`CONNECT PORT\n`, answered `OK …\n`),
// or over a plain Unix socket (a simulated VM) — reads the agent's
// challenge, signs a manifest over it, sends the values that go by
// session, and returns the agent's report.
//
// Whoever answers on a privileged vsock port is guest root, so the values
// go to the agent and to nobody else; whatever the agent reports is tied
// to the connection this package dialed, so no other process can make the
// host record "ready". Dialing retries with backoff until the caller's
// context ends, so a guest that is still booting is waited for without
// fixed sleeps.
//
// The transports are net.Conn; AF_VSOCK goes through
// github.com/mdlayher/vsock (dialVsock, the only code that touches it),
// and tests use Unix sockets only. This package is for host code
// (host/cmd/vmcred-host). It does not log.
package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/shared/address"
)

// Backoff between dial attempts: it doubles from MinBackoff to MaxBackoff.
const (
	MinBackoff = 50 * time.Millisecond
	MaxBackoff = 2 * time.Second
	// hybridReplyMax bounds the VMM's "OK …" line.
	hybridReplyMax = 64
)

// ErrRefused: the address answered but the agent is not (yet) there: the
// hybrid-vsock VMM closed after CONNECT, or a Unix or vsock connect was
// refused. Dial retries it.
var ErrRefused = errors.New("no agent listening yet")

// DialFunc opens one connection to a (no retries).
type DialFunc func(ctx context.Context, a address.Address) (net.Conn, error)

// DialOnce opens one stream to the agent at a: vsock:CID:PORT over
// AF_VSOCK, hybrid:SOCKETPATH:PORT through the VMM's Unix socket, or
// unix:PATH. A Unix socket (plain or hybrid) is refused when its folder
// can be written by other users, who could have put their own socket there
// to receive the values (CheckSocketPath).
func DialOnce(ctx context.Context, a address.Address) (net.Conn, error) {
	if err := a.CheckDial(); err != nil {
		return nil, err
	}
	switch {
	case a.IsVsock():
		c, err := dialVsock(ctx, a.CID, a.Port)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.EHOSTUNREACH) {
				return nil, fmt.Errorf("dial %s: %w: %w", a, ErrRefused, err)
			}
			return nil, fmt.Errorf("dial %s: %w", a, err)
		}
		return c, nil
	case a.Kind == address.Unix, a.Kind == address.Hybrid:
		if err := CheckSocketPath(a.Path); err != nil {
			return nil, fmt.Errorf("dial %s: %w", a, err)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", a.Path)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("dial %s: %w: %w", a, ErrRefused, err)
			}
			return nil, fmt.Errorf("dial %s: %w", a, err)
		}
		if a.Kind == address.Hybrid {
			if err := hybridConnect(ctx, c, a.Port); err != nil {
				c.Close()
				return nil, fmt.Errorf("dial %s: %w", a, err)
			}
		}
		return c, nil
	}
	return nil, fmt.Errorf("dial %s: not a session address (vsock:CID:PORT, hybrid:SOCKETPATH:PORT or unix:PATH)", a)
}

// hybridConnect asks the VMM for guest port port: "CONNECT PORT\n", then
// "OK <hostport>\n" once the guest accepted (Firecracker docs/vsock.md,
// cloud-hypervisor docs/vsock.md). With nobody listening on the guest
// port, the VMM closes the connection instead (ErrRefused). The reply is
// read one byte at a time so that nothing of the agent's stream is read
// ahead.
func hybridConnect(ctx context.Context, c net.Conn, port uint32) error {
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > 10*time.Second {
		dl = time.Now().Add(10 * time.Second)
	}
	_ = c.SetDeadline(dl)
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		return fmt.Errorf("CONNECT %d: %w: %w", port, ErrRefused, err)
	}
	var line []byte
	var b [1]byte
	for {
		n, err := c.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > hybridReplyMax {
				return fmt.Errorf("CONNECT %d: the VMM's reply is over %d bytes without a newline", port, hybridReplyMax)
			}
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return fmt.Errorf("CONNECT %d: the VMM closed the connection (no agent listening on port %d yet): %w", port, port, ErrRefused)
			}
			return fmt.Errorf("CONNECT %d: %w", port, err)
		}
	}
	reply := string(line)
	rest, ok := strings.CutPrefix(reply, "OK ")
	if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" {
		return fmt.Errorf("CONNECT %d: the VMM answered %q, want \"OK <port>\"", port, clip(reply))
	}
	return nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// CheckSocketPath refuses a Unix socket path whose folder other users can
// write, since anyone who can write there could replace the VMM's or the
// agent's socket with their own (or create it before the VMM does: a
// sticky bit does not stop that) and receive what the host sends; and an
// abstract name, which has no permissions at all.
func CheckSocketPath(path string) error {
	if strings.HasPrefix(path, "@") {
		return errors.New("an abstract Unix socket has no permissions: anyone could be listening; use a socket file")
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 {
		return fmt.Errorf("folder %s has mode %04o: other users could put their own socket there; keep the VMM's sockets in a folder only it and root can write", dir, m.Perm())
	}
	return nil
}

// Dial dials a until one attempt succeeds or ctx ends, retrying with
// backoff after ErrRefused (the VM is booting, the agent not yet
// listening). dial is DialOnce when nil. The returned error wraps ctx's
// when it ran out, and the last attempt's error.
func Dial(ctx context.Context, a address.Address, dial DialFunc) (net.Conn, int, error) {
	if dial == nil {
		dial = DialOnce
	}
	wait := MinBackoff
	attempts := 0
	for {
		attempts++
		c, err := dial(ctx, a)
		if err == nil {
			return c, attempts, nil
		}
		if !errors.Is(err, ErrRefused) {
			return nil, attempts, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, attempts, fmt.Errorf("%w (after %d attempts; last: %w)", ctx.Err(), attempts, err)
		case <-t.C:
		}
		wait = min(2*wait, MaxBackoff)
	}
}
