package push

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"time"

	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// Defaults.
const (
	// DefaultIOTimeout bounds each exchange of a session: the challenge,
	// sending the manifest and values, and waiting for the report (the
	// agent verifies and writes meanwhile).
	DefaultIOTimeout = 2 * time.Minute
)

// Credential is one credential a session lists: its value is sent when its
// Delivery is manifest.DeliveryChannel; otherwise firmware brought it at
// boot and only its entry goes in the manifest.
type Credential struct {
	Name     string
	Value    credential.Secret
	Delivery manifest.Delivery
	Static   bool
	Policy   manifest.Policy
}

// Request is what one session sends.
type Request struct {
	VM  string
	Key ed25519.PrivateKey
	// IssuedAt and NotAfter stamp the manifest (NotAfter optional).
	IssuedAt, NotAfter time.Time
	Credentials        []Credential
	// IOTimeout bounds each exchange (DefaultIOTimeout when 0).
	IOTimeout time.Duration
	// MinGeneration is the lowest generation to sign: one more than the
	// host's record of the last one the agent accepted (0: none). The
	// session signs max(MinGeneration, the agent's generation + 1), so a
	// lost record starts above what the agent reports.
	MinGeneration uint64
}

// Result is what a session brought back.
type Result struct {
	// Challenge is what the agent opened with.
	Challenge proto.Challenge
	// Generation is the generation the manifest was signed as.
	Generation uint64
	// Report is the agent's report on this connection.
	Report proto.Report
	// Sent lists the credentials whose values went in the session.
	Sent []string
	// Bytes counts the value bytes sent.
	Bytes int64
	// Acked is true when the ACK went out.
	Acked bool
}

// ErrBusy wraps an agent's CodeUnavailable refusal: another session holds
// it; dialing again later helps.
var ErrBusy = errors.New("the agent is busy with another session")

// Session runs one session on c (already dialed): read the agent's Magic
// and CHALLENGE; sign a manifest over the challenge, the VM name, the
// next generation and every entry; send it and the values; read the
// REPORT; send the ACK. The report comes from the connection this host
// dialed and nowhere else. On an error after the values went out, the
// agent may or may not have written them; dialing again runs a new
// session with a new challenge.
func Session(ctx context.Context, c net.Conn, req Request) (Result, error) {
	var res Result
	io := req.IOTimeout
	if io <= 0 {
		io = DefaultIOTimeout
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	deadline := func() {
		d := time.Now().Add(io)
		if dl, ok := ctx.Deadline(); ok && dl.Before(d) {
			d = dl
		}
		_ = c.SetDeadline(d)
	}
	deadline()
	if err := proto.ReadMagic(c); err != nil {
		return res, fmt.Errorf("read the agent's greeting: %w", err)
	}
	conn := proto.NewHost(c)
	ch, err := conn.ReadChallenge()
	if err != nil {
		var re *proto.RemoteError
		if errors.As(err, &re) && re.Code.Retryable() {
			return res, fmt.Errorf("%w: %w", ErrBusy, err)
		}
		return res, err
	}
	res.Challenge = ch
	res.Generation = max(ch.Generation+1, req.MinGeneration)
	// The agent bounds its write and the consumers' restarts by what is
	// left of ctx (the whole of push's --timeout), signed in the manifest.
	var budget time.Duration
	if dl, ok := ctx.Deadline(); ok {
		budget = max(time.Until(dl), time.Millisecond)
	}
	envelope, send, err := build(req, ch, res.Generation, budget)
	if err != nil {
		return res, err
	}
	defer clear(envelope)
	deadline()
	if err := conn.WriteManifest(envelope); err != nil {
		return res, err
	}
	for _, s := range send {
		res.Sent = append(res.Sent, s.Name)
		res.Bytes += int64(s.Value.Len())
	}
	// A refused manifest is answered at once and the values are never
	// read: the write may fail then, and the REPORT still says why.
	werr := conn.WriteCredentials(send)
	deadline()
	rep, err := conn.ReadReport()
	if err != nil {
		if werr != nil {
			return res, fmt.Errorf("%w (sending the values: %w)", err, werr)
		}
		return res, err
	}
	res.Report = rep
	if err := conn.WriteAck("recorded " + rep.Outcome.String()); err == nil {
		res.Acked = true
	} else if rep.Outcome == proto.OutcomeReady {
		// The agent has written its credstore; a lost ACK changes
		// nothing on its side, and the report stands.
		res.Acked = false
	}
	return res, nil
}

// build signs the session's manifest and lists the values to send.
func build(req Request, ch proto.Challenge, gen uint64, budget time.Duration) ([]byte, []proto.Credential, error) {
	b := manifest.NewBuilder(req.VM, req.IssuedAt)
	if !req.NotAfter.IsZero() {
		b.SetNotAfter(req.NotAfter)
	}
	b.SetSession(ch.Nonce, gen)
	b.SetBudget(budget)
	var send []proto.Credential
	for _, c := range req.Credentials {
		e := manifest.NewEntry(c.Name, c.Value, c.Delivery, c.Static)
		e.Policy = c.Policy
		if err := b.AddEntry(e); err != nil {
			return nil, nil, fmt.Errorf("manifest: %w", err)
		}
		if c.Delivery == manifest.DeliveryChannel {
			send = append(send, proto.Credential{Name: c.Name, Value: c.Value})
		}
	}
	env, err := b.Envelope(req.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	return env, send, nil
}

// Peek dials cfg.Address (with Push's retries) and reads the agent's
// CHALLENGE, then hangs up without signing or sending anything: what
// --dry-run uses to learn the generation the agent holds. The agent sees
// a connection that sent nothing, which costs it one pending slot until
// the close.
func Peek(ctx context.Context, cfg Config) (proto.Challenge, error) {
	dial := cfg.Dial
	if dial == nil {
		dial = DialOnce
	}
	c, _, err := Dial(ctx, cfg.Address, dial)
	if err != nil {
		return proto.Challenge{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := proto.ReadMagic(c); err != nil {
		return proto.Challenge{}, fmt.Errorf("read the agent's greeting: %w", err)
	}
	return proto.NewHost(c).ReadChallenge()
}
