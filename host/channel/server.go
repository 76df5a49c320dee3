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

	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/notify"
)

// Defaults for Config's limits.
const (
	// DefaultMaxConns bounds connections served at once; more are closed
	// as soon as they are accepted.
	DefaultMaxConns = 64
	// DefaultHelloTimeout is how long a connection has, from accept, to
	// deliver Magic and a whole HELLO.
	DefaultHelloTimeout = 5 * time.Second
	// DefaultReportTimeout is how long the agent has, after CREDENTIALS,
	// to send its REPORT: it verifies and writes the credstore meanwhile.
	DefaultReportTimeout = 2 * time.Minute
	// DefaultWriteTimeout bounds each frame the server writes.
	DefaultWriteTimeout = 30 * time.Second
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
	// ErrUnknownProtocol: neither vmcred's Magic nor sd_notify text.
	ErrUnknownProtocol = errors.New("neither vmcred's protocol nor sd_notify text")
	// ErrBadToken: a HELLO whose token is not the manifest's.
	ErrBadToken = errors.New("channel token does not match")
	// ErrWrongBoot: a HELLO whose boot nonce is not the manifest's.
	ErrWrongBoot = errors.New("boot nonce does not match the manifest")
	// ErrAlreadyFetched: this boot's credentials were served already.
	ErrAlreadyFetched = errors.New("credentials already fetched for this boot")
	// ErrNoState: there is no serve state (pack has not run).
	ErrNoState = errors.New("no serve state")
	// ErrEmpty: the peer closed without sending a byte.
	ErrEmpty = errors.New("closed without sending anything")
	// ErrNoReport: an authenticated agent closed without its REPORT.
	ErrNoReport = errors.New("closed without a report")
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

// Hello is what an authenticated agent said about itself.
type Hello struct {
	VM           string
	Nonce        [manifest.NonceSize]byte
	BootID       string
	AgentVersion string
}

// Events are the server's reports to its owner. Each is optional and may
// be called from many goroutines at once.
type Events struct {
	// Notify: an sd_notify message arrived; the connection is closed.
	// end is "eof", or "idle" when the message was ended by the idle
	// timeout.
	Notify func(p Peer, m notify.Message, end string)
	// Fetched: CREDENTIALS went to an authenticated agent.
	Fetched func(p Peer, h Hello, names []string, bytes int64)
	// Report: an authenticated agent's REPORT. The returned text goes
	// back in the ACK.
	Report func(p Peer, h Hello, r proto.Report) string
	// Dropped: a connection was refused or broke a rule. err names the
	// problem, never a value or the token.
	Dropped func(p Peer, err error)
}

// Config configures a Server.
type Config struct {
	// State returns the current serve state; it is called for every
	// HELLO, so a server outlives a re-pack (new nonce, new token). An
	// error makes the agent retry (CodeUnavailable).
	State func() (*State, error)
	// AllowRefetch serves a boot's credentials more than once (a guest
	// rebooted with the same firmware, hence the same manifest).
	AllowRefetch bool
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
	ReportTimeout time.Duration
	WriteTimeout  time.Duration
	NotifyIdle    time.Duration
	NotifyTimeout time.Duration
}

// Server serves one VM's channel. Its methods are safe for concurrent use.
type Server struct {
	cfg Config
	seq atomic.Uint64

	mu sync.Mutex
	// nonce is the boot the fetch record is for; a new nonce resets it.
	nonce    [manifest.NonceSize]byte
	fetched  bool
	inflight bool
}

// New returns a server. cfg.State is required.
func New(cfg Config) (*Server, error) {
	if cfg.State == nil {
		return nil, errors.New("channel server: no State function")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	def(&cfg.HelloTimeout, DefaultHelloTimeout)
	def(&cfg.ReportTimeout, DefaultReportTimeout)
	def(&cfg.WriteTimeout, DefaultWriteTimeout)
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
			if err := s.handle(ctx, conn, p); err != nil {
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
func (s *Server) handle(ctx context.Context, c net.Conn, p Peer) error {
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
	switch {
	case first[0] == proto.Magic[0]:
		return s.vmcred(ctx, c, p)
	case notify.IsKeyByte(first[0]):
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

// vmcred runs one conversation: HELLO → CREDENTIALS or ERROR → REPORT →
// ACK. The read deadline set by handle (HelloTimeout from accept) still
// covers Magic and HELLO.
func (s *Server) vmcred(ctx context.Context, c net.Conn, p Peer) error {
	var rest [len(proto.Magic) - 1]byte
	if _, err := io.ReadFull(c, rest[:]); err != nil {
		return fmt.Errorf("read magic: %w", timeoutErr(err, s.cfg.HelloTimeout))
	}
	if string(rest[:]) != proto.Magic[1:] {
		return fmt.Errorf("read magic: %w", proto.ErrBadMagic)
	}
	conn := proto.NewServer(c)
	refuse := func(code proto.ErrorCode, text string, err error) error {
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_ = conn.WriteError(code, text)
		return err
	}
	h, err := conn.ReadHello()
	if err != nil {
		err = fmt.Errorf("read hello: %w", timeoutErr(err, s.cfg.HelloTimeout))
		if errors.Is(err, proto.ErrUnsupportedVersion) {
			return refuse(proto.CodeUnsupportedVersion, fmt.Sprintf("this host speaks protocol version %d", proto.ProtocolVersion), err)
		}
		return refuse(proto.CodeBadRequest, "malformed hello", err)
	}
	st, err := s.cfg.State()
	if err != nil {
		return refuse(proto.CodeUnavailable, "the host has no serve state for this VM yet; retry", fmt.Errorf("%w: %w", ErrNoState, err))
	}
	// The token first: nothing else is said to a peer that lacks it.
	if !st.CheckToken(h.Token) {
		return refuse(proto.CodeBadToken, "the channel token does not match", ErrBadToken)
	}
	// Bootstrap mode (the manifest goes by channel) is tokenless and the
	// guest cannot know the nonce: see State.Bootstrap for what that
	// costs. The fetch is still once per pack (keyed on st.Nonce).
	if h.BootNonce != st.Nonce && !st.bootstrapHello(h) {
		return refuse(proto.CodeWrongBoot, "the boot nonce is not the one the host packed; is the manifest from an earlier pack?", ErrWrongBoot)
	}
	hello := Hello{VM: st.VM, Nonce: st.Nonce, BootID: h.BootID, AgentVersion: h.AgentVersion}

	// From here on the peer is authenticated: whatever happens to the
	// fetch, it may send its REPORT (a failed one, then).
	if err := s.serveCredentials(ctx, c, conn, p, st, hello); err != nil {
		var re *proto.RemoteError
		if !errors.As(err, &re) {
			return err
		}
		s.drop(p, err)
	}

	if err := c.SetReadDeadline(time.Now().Add(s.cfg.ReportTimeout)); err != nil {
		return err
	}
	r, err := conn.ReadReport()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return ErrNoReport
		}
		err = fmt.Errorf("read report: %w", timeoutErr(err, s.cfg.ReportTimeout))
		return refuse(proto.CodeBadRequest, "malformed report", err)
	}
	ack := "report received"
	if s.cfg.Events.Report != nil {
		ack = s.cfg.Events.Report(p, hello, r)
	}
	if err := c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil {
		return err
	}
	if err := conn.WriteAck(ack); err != nil {
		return fmt.Errorf("write ack: %w", err)
	}
	return nil
}

// serveCredentials answers an authenticated HELLO: CREDENTIALS once per
// boot nonce, or ERROR. A refusal sent to the agent comes back as a
// *proto.RemoteError (the conversation goes on to the REPORT); any other
// error ends the connection.
func (s *Server) serveCredentials(ctx context.Context, c net.Conn, conn *proto.Conn, p Peer, st *State, h Hello) error {
	refuse := func(code proto.ErrorCode, text string, cause error) error {
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if err := conn.WriteError(code, text); err != nil {
			return fmt.Errorf("write error: %w", err)
		}
		return fmt.Errorf("%w: %w", cause, &proto.RemoteError{Code: code, Text: text})
	}
	if !s.reserve(st.Nonce) {
		if s.isInflight() {
			return refuse(proto.CodeUnavailable, "another fetch for this boot is in progress; retry", ErrAlreadyFetched)
		}
		return refuse(proto.CodeAlreadyFetched, "this boot's credentials were fetched already (the host allows one fetch per boot; --allow-refetch permits more)", ErrAlreadyFetched)
	}
	done := false
	defer func() { s.release(st.Nonce, done) }()

	// The sources are opened and their sizes checked first: a problem
	// found now is answered with ERROR. Their content is checked while it
	// is sent (streamSource): a credential whose SHA-256 does not match
	// loses its last bytes and the connection, so the agent never has a
	// whole CREDENTIALS frame with wrong data.
	srcs, err := st.openSources(ctx)
	if err != nil {
		// The detail (file paths) stays on the host; the guest learns
		// only that it was the host's fault.
		return refuse(proto.CodeInternal, "the host could not read the channel credentials; see the host's log", err)
	}
	defer closeSources(srcs)
	if err := c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil {
		return err
	}
	total, err := streamCredentials(conn, srcs)
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	done = true
	if s.cfg.Events.Fetched != nil {
		names := st.Names()
		if st.Bootstrap {
			names = append([]string{ManifestName}, names...)
		}
		s.cfg.Events.Fetched(p, h, names, total)
	}
	return nil
}

// reserve claims this boot's one fetch. It fails if the fetch happened
// (unless AllowRefetch) or another connection holds the claim.
func (s *Server) reserve(nonce [manifest.NonceSize]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if nonce != s.nonce {
		s.nonce, s.fetched, s.inflight = nonce, false, false
	}
	if s.inflight || (s.fetched && !s.cfg.AllowRefetch) {
		return false
	}
	s.inflight = true
	return true
}

// release ends a claim; done says whether the credentials went out.
func (s *Server) release(nonce [manifest.NonceSize]byte, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if nonce != s.nonce {
		return
	}
	s.inflight = false
	s.fetched = s.fetched || done
}

func (s *Server) isInflight() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight
}

// timeoutErr names the limit when err is a deadline.
func timeoutErr(err error, d time.Duration) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no complete message within %v: %w", d, err)
	}
	return err
}
