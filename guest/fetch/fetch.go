// Package fetch is the guest end of vmcred's channel: it dials the address
// the manifest names (vsock-stream:2:PORT, or unix:PATH in tests and
// simulated VMs), presents the manifest's one-time token and boot nonce,
// receives the credentials whose delivery is "channel", and later sends
// the agent's REPORT and reads the host's ACK (shared/channel). It also
// sends sd_notify messages to a vsock NOTIFY_SOCKET, which go-systemd's
// daemon.SdNotify cannot (it only speaks unixgram).
//
// Dialing retries with backoff until the caller's context ends, so a host
// whose server is still starting, or busy, is waited for; refusals that
// retrying cannot fix (a wrong token, this boot fetched already) end the
// fetch at once.
//
// The transports are net.Conn: Dial opens a Unix stream or, through
// github.com/mdlayher/vsock, an AF_VSOCK stream; tests use Unix sockets
// and may inject their own DialFunc. Guest packages only. It does not log.
package fetch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// Defaults.
const (
	// DefaultMinBackoff is the first pause between attempts; it doubles
	// up to DefaultMaxBackoff.
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 2 * time.Second
	// DefaultIOTimeout bounds one exchange (HELLO and the answer; REPORT
	// and the ACK) within the caller's deadline.
	DefaultIOTimeout = 30 * time.Second
)

// DialFunc opens a byte stream to a.
type DialFunc func(ctx context.Context, a address.Address) (net.Conn, error)

// Dial opens a stream to a: a Unix stream socket for unix:PATH, an AF_VSOCK
// stream for vsock: and vsock-stream: addresses.
func Dial(ctx context.Context, a address.Address) (net.Conn, error) {
	if err := a.CheckDial(); err != nil {
		return nil, err
	}
	if a.IsVsock() {
		return dialVsock(ctx, a.CID, a.Port)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", a.Path)
}

// Config says whom to fetch from and what to present.
type Config struct {
	// Address is where the host's channel server listens, as the guest
	// reaches it.
	Address address.Address
	// Dial opens connections (Dial when nil).
	Dial DialFunc
	// Token is the manifest's channel token: proto.TokenSize bytes, or
	// empty for a tokenless manifest (32 zero bytes are sent; the host
	// then relies on who can reach its socket).
	Token credential.Secret
	// Nonce is the manifest's boot nonce.
	Nonce [manifest.NonceSize]byte
	// BootID is the guest kernel's boot ID, reported to the host.
	BootID string
	// AgentVersion is reported to the host.
	AgentVersion string
	// Backoff between attempts and the bound on each exchange; zero
	// means the defaults.
	MinBackoff, MaxBackoff time.Duration
	IOTimeout              time.Duration
}

func (c Config) withDefaults() Config {
	if c.Dial == nil {
		c.Dial = Dial
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.IOTimeout <= 0 {
		c.IOTimeout = DefaultIOTimeout
	}
	return c
}

// Session is one boot's conversation with the host. It exists once the
// host has answered a HELLO, so the host knows this agent and will take its
// REPORT, whether or not the credentials came.
type Session struct {
	cfg Config
	// Credentials are what the host sent; nil if it refused.
	Credentials []proto.Credential
	// Attempts counts the connections made.
	Attempts int
	// conn is the open connection the REPORT goes on, or nil when it was
	// closed (Report then opens another).
	conn  net.Conn
	proto *proto.Conn
}

// Fetch connects to the host and fetches this boot's channel credentials,
// retrying with backoff until ctx ends on errors that may pass (no server
// yet, a broken connection, a busy or failing host). It returns:
//   - a Session with Credentials, and nil: the host sent them;
//   - a Session and an error wrapping *proto.RemoteError: the host refused
//     for good (wrong token, wrong boot, fetched already, …); the
//     Session can still carry the REPORT;
//   - a Session or nil, and ctx's error: time ran out; the Session is
//     non-nil if the host ever answered.
//
// The caller must Close the Session.
func Fetch(ctx context.Context, cfg Config) (*Session, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Address.CheckDial(); err != nil {
		return nil, err
	}
	var s *Session
	attempts := 0
	backoff := cfg.MinBackoff
	var last error
	for {
		attempts++
		a, err := attempt(ctx, cfg)
		if a.answered && s == nil {
			s = &Session{cfg: cfg}
		}
		if s != nil {
			s.Attempts = attempts
		}
		if err == nil {
			s.Credentials, s.conn, s.proto = a.creds, a.conn, a.proto
			return s, nil
		}
		var re *proto.RemoteError
		if errors.As(err, &re) && !re.Code.Retryable() {
			if s != nil {
				s.conn, s.proto = a.conn, a.proto
			}
			return s, err
		}
		if a.conn != nil {
			a.conn.Close()
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return s, fmt.Errorf("fetch from %s: gave up after %d attempt(s): %w (last error: %w)", cfg.Address, attempts, ctx.Err(), last)
		case <-t.C:
		}
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
}

// attempted is the outcome of one connection.
type attempted struct {
	// conn and proto are the open connection, set when the host answered.
	conn  net.Conn
	proto *proto.Conn
	creds []proto.Credential
	// answered is true when the host replied to the HELLO with
	// CREDENTIALS, or with an ERROR after which it takes a REPORT
	// (takesReport): it knows this agent.
	answered bool
}

// takesReport says whether the host, having refused with code, still
// takes the agent's REPORT on that connection: it does when the HELLO was
// authenticated (token and boot nonce right), and then refused for one of
// these reasons.
func takesReport(code proto.ErrorCode) bool {
	switch code {
	case proto.CodeAlreadyFetched, proto.CodeInternal, proto.CodeUnavailable:
		return true
	}
	return false
}

// attempt makes one connection: HELLO, then CREDENTIALS or ERROR. It
// keeps the connection open when the host answered and closes it
// otherwise.
func attempt(ctx context.Context, cfg Config) (a attempted, err error) {
	conn, err := cfg.Dial(ctx, cfg.Address)
	if err != nil {
		return a, fmt.Errorf("dial %s: %w", cfg.Address, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		if !stop() {
			// ctx ended and closed the connection.
			a.answered = false
			err = errors.Join(err, ctx.Err())
		}
		if a.answered {
			a.conn = conn
		} else {
			conn.Close()
			for _, c := range a.creds {
				c.Value.Wipe()
			}
			a = attempted{}
		}
	}()
	if err := conn.SetDeadline(deadline(ctx, cfg.IOTimeout)); err != nil {
		return a, err
	}
	a.proto = proto.NewClient(conn)
	if err := a.proto.WriteHello(hello(cfg)); err != nil {
		return a, fmt.Errorf("send hello to %s: %w", cfg.Address, err)
	}
	a.creds, err = a.proto.ReadCredentials()
	var re *proto.RemoteError
	switch {
	case err == nil:
		a.answered = true
		return a, nil
	case errors.As(err, &re):
		a.answered = takesReport(re.Code)
		return a, fmt.Errorf("fetch from %s: %w", cfg.Address, err)
	}
	return a, fmt.Errorf("fetch from %s: %w", cfg.Address, err)
}

func hello(cfg Config) proto.Hello {
	tok := cfg.Token
	if tok.Len() == 0 {
		tok = credential.NewSecret(make([]byte, proto.TokenSize))
	}
	return proto.Hello{Token: tok, BootNonce: cfg.Nonce, BootID: cfg.BootID, AgentVersion: cfg.AgentVersion}
}

// deadline is now+d, or ctx's deadline if that is sooner.
func deadline(ctx context.Context, d time.Duration) time.Time {
	t := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(t) {
		return dl
	}
	return t
}

// Report sends r and returns the host's ACK text. It uses the Session's
// connection; if that is gone or breaks, it opens another (HELLO again,
// whose answer it ignores: the host takes a REPORT after any answer to an
// authenticated HELLO) and retries with backoff until ctx ends.
func (s *Session) Report(ctx context.Context, r proto.Report) (string, error) {
	if _, err := proto.EncodeReport(r); err != nil {
		return "", err
	}
	backoff := s.cfg.MinBackoff
	for {
		ack, err := s.reportOnce(ctx, r)
		if err == nil {
			return ack, nil
		}
		var re *proto.RemoteError
		if errors.As(err, &re) && !re.Code.Retryable() {
			return "", err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("report to %s: %w (last error: %w)", s.cfg.Address, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

func (s *Session) reportOnce(ctx context.Context, r proto.Report) (string, error) {
	if s.conn == nil {
		s.Attempts++
		a, err := attempt(ctx, s.cfg)
		for _, c := range a.creds {
			c.Value.Wipe()
		}
		if !a.answered {
			return "", err
		}
		s.conn, s.proto = a.conn, a.proto
	}
	conn := s.conn
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	ack, err := func() (string, error) {
		if err := conn.SetDeadline(deadline(ctx, s.cfg.IOTimeout)); err != nil {
			return "", err
		}
		if err := s.proto.WriteReport(r); err != nil {
			return "", fmt.Errorf("send report to %s: %w", s.cfg.Address, err)
		}
		ack, err := s.proto.ReadAck()
		if err != nil {
			return "", fmt.Errorf("read ack from %s: %w", s.cfg.Address, err)
		}
		return ack, nil
	}()
	// One REPORT per connection, whatever happened.
	s.conn.Close()
	s.conn, s.proto = nil, nil
	return ack, err
}

// Close closes the connection, if one is open, and wipes the credentials.
func (s *Session) Close() error {
	if s == nil {
		return nil
	}
	for _, c := range s.Credentials {
		c.Value.Wipe()
	}
	if s.conn != nil {
		err := s.conn.Close()
		s.conn, s.proto = nil, nil
		return err
	}
	return nil
}
