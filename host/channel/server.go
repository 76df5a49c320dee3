package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmcred/vmcred/shared/notify"
)

// Defaults for Config's limits.
const (
	// DefaultMaxConns bounds connections served at once; more are closed
	// as soon as they are accepted.
	DefaultMaxConns = 64
	// DefaultHelloTimeout is how long a connection has, from accept, to
	// send its first byte.
	DefaultHelloTimeout = 5 * time.Second
	// DefaultNotifyIdle ends a notify message this long after its last
	// byte when no EOF comes (cloud-hypervisor ≤ 52 and vhost-device-vsock
	// do not forward the guest's half-close). microvm.nix's socat bridge
	// uses 200 ms for the same reason (microvm.nix 9a67f3f); PID 1 writes
	// each message in one send(), so nothing more arrives after a pause.
	DefaultNotifyIdle = 250 * time.Millisecond
	// DefaultNotifyTimeout bounds a whole notify message, so a peer that
	// trickles bytes faster than the idle timeout is still cut off.
	DefaultNotifyTimeout = 5 * time.Second
)

// Errors passed to Events.Dropped; test with errors.Is.
var (
	// ErrBusy: the connection limit was reached; closed at once.
	ErrBusy = errors.New("too many connections")
	// ErrWrongCID: an AF_VSOCK peer that is not the expected VM.
	ErrWrongCID = errors.New("peer is not the expected VM")
	// ErrUnknownProtocol: not sd_notify text.
	ErrUnknownProtocol = errors.New("not sd_notify text")
	// ErrEmpty: the peer closed without sending a byte.
	ErrEmpty = errors.New("closed without sending anything")
)

// Peer identifies a connection in events and log lines.
type Peer struct {
	// Addr is the peer's address as the transport gives it ("vm(3):1023"
	// for AF_VSOCK); empty for an unnamed Unix peer.
	Addr string
	// CID is the AF_VSOCK peer's context ID, 0 for other transports.
	CID uint32
	// Listener is the address the connection arrived on.
	Listener string
	// Seq numbers the connections of one Serve call, from 1.
	Seq uint64
}

// String names the peer: its address, else the connection's number on
// its listener.
func (p Peer) String() string {
	if p.Addr != "" && p.Addr != "@" {
		return p.Addr
	}
	return "connection " + strconv.FormatUint(p.Seq, 10) + " on " + p.Listener
}

// Events are the server's reports to its owner. Each is optional and may
// be called from many goroutines at once.
type Events struct {
	// Notify: an sd_notify message arrived; the connection is closed.
	// end is "eof", or "idle" when the message was ended by the idle
	// timeout.
	Notify func(p Peer, m notify.Message, end string)
	// Dropped: a connection was refused or broke a rule. err names the
	// problem.
	Dropped func(p Peer, err error)
}

// Config configures a Server.
type Config struct {
	// ExpectCID, when not 0, refuses AF_VSOCK peers with another CID.
	// Guest CIDs are always above 2, so 0 can mean "unset".
	ExpectCID uint32
	// PeerCID returns an AF_VSOCK peer's CID (VsockPeerCID when nil).
	PeerCID func(net.Conn) (uint32, bool)
	// Events receives what happened.
	Events Events
	// Limits; zero means the default.
	MaxConns      int
	HelloTimeout  time.Duration
	NotifyIdle    time.Duration
	NotifyTimeout time.Duration
}

// Server receives one VM's vmm.notify_socket messages. Its methods are
// safe for concurrent use.
type Server struct {
	cfg Config
	seq atomic.Uint64
}

// New returns a server.
func New(cfg Config) (*Server, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	def(&cfg.HelloTimeout, DefaultHelloTimeout)
	def(&cfg.NotifyIdle, DefaultNotifyIdle)
	def(&cfg.NotifyTimeout, DefaultNotifyTimeout)
	if cfg.PeerCID == nil {
		cfg.PeerCID = VsockPeerCID
	}
	return &Server{cfg: cfg}, nil
}

// Serve accepts connections on l until ctx is done, then closes l and
// every open connection and returns nil once all its goroutines have
// ended. It returns early with an error only if l fails for good.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, s.cfg.MaxConns)
	listener := l.Addr().String()
	backoff := time.Duration(0)
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", listener, err)
			}
			// EMFILE and the like: wait and try again, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			continue
		}
		backoff = 0
		p := s.peer(conn, listener)
		select {
		case sem <- struct{}{}:
		default:
			conn.Close()
			s.drop(p, fmt.Errorf("%w (limit %d): closed", ErrBusy, s.cfg.MaxConns))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer conn.Close()
			// Unblock any read or write when the server stops.
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			defer stop()
			if err := s.handle(conn, p); err != nil {
				s.drop(p, err)
			}
		}()
	}
}

func (s *Server) peer(c net.Conn, listener string) Peer {
	p := Peer{Listener: listener, Seq: s.seq.Add(1)}
	if a := c.RemoteAddr(); a != nil {
		p.Addr = a.String()
	}
	if cid, ok := s.cfg.PeerCID(c); ok {
		p.CID = cid
	}
	return p
}

func (s *Server) drop(p Peer, err error) {
	if s.cfg.Events.Dropped != nil {
		s.cfg.Events.Dropped(p, err)
	}
}

// handle serves one connection. A returned error is reported as a drop.
func (s *Server) handle(c net.Conn, p Peer) error {
	start := time.Now()
	if s.cfg.ExpectCID != 0 {
		if cid, ok := s.cfg.PeerCID(c); ok && cid != s.cfg.ExpectCID {
			return fmt.Errorf("%w: CID %d, want %d", ErrWrongCID, cid, s.cfg.ExpectCID)
		}
	}
	if err := c.SetReadDeadline(start.Add(s.cfg.HelloTimeout)); err != nil {
		return err
	}
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrEmpty
		}
		return fmt.Errorf("read first byte: %w", timeoutErr(err, s.cfg.HelloTimeout))
	}
	if notify.IsKeyByte(first[0]) {
		return s.notify(c, p, first[0], start)
	}
	return fmt.Errorf("%w (first byte 0x%02x)", ErrUnknownProtocol, first[0])
}

// notify reads one sd_notify message: to EOF, or until the peer has been
// quiet for NotifyIdle, at most notify.MaxSize bytes within NotifyTimeout
// of the connection's start; then it closes the connection at once, which
// is what a systemd ≥ 256 sender waits for.
func (s *Server) notify(c net.Conn, p Peer, first byte, start time.Time) error {
	buf := make([]byte, 1, 256)
	buf[0] = first
	var chunk [512]byte
	limit := start.Add(s.cfg.NotifyTimeout)
	end := ""
	for end == "" {
		now := time.Now()
		if !now.Before(limit) {
			return fmt.Errorf("notify message not finished within %v (%d bytes so far)", s.cfg.NotifyTimeout, len(buf))
		}
		deadline := now.Add(s.cfg.NotifyIdle)
		if deadline.After(limit) {
			deadline = limit
		}
		if err := c.SetReadDeadline(deadline); err != nil {
			return err
		}
		n, err := c.Read(chunk[:])
		buf = append(buf, chunk[:n]...)
		if len(buf) > notify.MaxSize {
			return fmt.Errorf("notify message: over %d bytes: %w", notify.MaxSize, notify.ErrTooLarge)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			end = "eof"
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(limit):
			end = "idle"
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("notify message not finished within %v (%d bytes so far)", s.cfg.NotifyTimeout, len(buf))
		default:
			return fmt.Errorf("read notify message: %w", err)
		}
	}
	c.Close()
	m, err := notify.Parse(buf)
	if err != nil {
		return err
	}
	if len(m.Fields) == 0 {
		return fmt.Errorf("notify message of %d bytes has no KEY=VALUE line", len(buf))
	}
	if s.cfg.Events.Notify != nil {
		s.cfg.Events.Notify(p, m, end)
	}
	return nil
}

// timeoutErr names the limit when err is a deadline.
func timeoutErr(err error, d time.Duration) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no complete message within %v: %w", d, err)
	}
	return err
}
