package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/vmcred/vmcred/guest/fetch"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// SourceChannel is the Source of a credential fetched over the channel.
const SourceChannel = "channel"

// DefaultTimeout bounds the channel step (dial, retries and fetch) when
// Config.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// ReportTimeout bounds sending the REPORT and reading the ACK, after the
// credstore is written: a separate budget, so a fetch that used up
// Config.Timeout still gets its failure to the host.
const ReportTimeout = 10 * time.Second

// bootIDPath is the kernel's boot ID, relative to Config.Root.
const bootIDPath = "proc/sys/kernel/random/boot_id"

// ChannelStep is what happened on the channel. It holds no value.
type ChannelStep struct {
	// Address is what was dialed: the manifest's channel, or the
	// --channel override.
	Address string `json:"address"`
	// Attempts counts connections made.
	Attempts int `json:"attempts"`
	// Received lists the credentials the host sent.
	Received []string `json:"received"`
	// Error is why the fetch failed, if it did.
	Error string `json:"error,omitempty"`
	// Reported is true when the REPORT went out and the host answered;
	// Acknowledged when that answer was an ACK, whose text is Ack.
	Reported     bool   `json:"reported"`
	Acknowledged bool   `json:"acknowledged"`
	Ack          string `json:"ack,omitempty"`
	ReportError  string `json:"report_error,omitempty"`
}

// channel is one load's use of the channel: the session, kept open from
// the fetch (during verification) to the report (after the credstore
// write).
type channel struct {
	cfg     Config
	ctx     context.Context
	session *fetch.Session
	step    *ChannelStep
	took    time.Duration
	// bootstrapped: the manifest came by channel (bootstrap), and
	// prefetched are the other credentials of that one fetch.
	bootstrapped bool
	prefetched   []oemstring.Entry
	// timedOut: the fetch gave up because --timeout passed, which makes
	// the load's exit code 4 when nothing else went wrong.
	timedOut bool
}

// fetch dials the manifest's channel (or the override), fetches, and
// returns the credentials as entries with Source "channel", and a problem
// text if the fetch failed. It records the attempt in rep.
func (ch *channel) fetch(m *manifest.Manifest, rep *Report) ([]oemstring.Entry, string) {
	if ch.bootstrapped {
		// Fetched with the manifest already: one fetch per pack.
		return ch.prefetched, ""
	}
	addr := m.Channel
	if ch.cfg.Channel != "" {
		addr = ch.cfg.Channel
	}
	out, _, err := ch.dial(addr, m.Token, m.Nonce, rep)
	if err != nil {
		return nil, ch.step.Error
	}
	return out, ""
}

// dial fetches from the channel at addr with token and nonce, within
// Config.Timeout: the one fetch of a load, firmware or bootstrap mode. It
// records the attempt as rep.Fetch (ch.step, whose Error is set on
// failure), keeps the session for the report, and returns what the host
// sent as entries with Source "channel". dialed is false when addr itself
// was refused and nothing was dialed.
func (ch *channel) dial(addr string, token credential.Secret, nonce [manifest.NonceSize]byte, rep *Report) (_ []oemstring.Entry, dialed bool, _ error) {
	start := time.Now()
	defer func() { ch.took = time.Since(start) }()
	ch.step = &ChannelStep{Address: addr, Received: []string{}}
	rep.Fetch = ch.step
	a, err := address.Parse(addr)
	if err == nil {
		err = a.CheckDial()
	}
	if err != nil {
		ch.step.Error = "channel address: " + err.Error()
		return nil, false, err
	}
	timeout := ch.cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ch.ctx, timeout)
	defer cancel()
	s, err := fetch.Fetch(ctx, fetch.Config{
		Address: a, Dial: ch.cfg.Dial, Token: token, Nonce: nonce,
		BootID: readBootID(ch.cfg.Root), AgentVersion: agentVersion(ch.cfg.Version),
	})
	ch.session = s
	if s != nil {
		ch.step.Attempts = s.Attempts
	}
	if err != nil {
		ch.step.Error = err.Error()
		ch.timedOut = errors.Is(err, context.DeadlineExceeded)
		return nil, true, err
	}
	out := make([]oemstring.Entry, 0, len(s.Credentials))
	for i, c := range s.Credentials {
		ch.step.Received = append(ch.step.Received, c.Name)
		out = append(out, oemstring.Entry{Name: c.Name, Value: c.Value, Source: SourceChannel, Index: i})
	}
	return out, true, nil
}

// report sends the load's outcome, if the host ever answered, and records
// whether it acknowledged. It closes the session.
func (ch *channel) report(rep *Report) {
	if ch == nil || ch.session == nil {
		return
	}
	defer ch.session.Close()
	ctx, cancel := context.WithTimeout(ch.ctx, ReportTimeout)
	defer cancel()
	ack, err := ch.session.Report(ctx, wireReport(rep))
	if ch.session.Attempts > ch.step.Attempts {
		ch.step.Attempts = ch.session.Attempts
	}
	if err != nil {
		ch.step.ReportError = err.Error()
		return
	}
	ch.step.Reported, ch.step.Acknowledged, ch.step.Ack = true, true, ack
}

// wireReport turns the load's report into the channel's REPORT: names,
// sizes, digest prefixes and verdicts; never a value.
func wireReport(rep *Report) proto.Report {
	r := proto.Report{
		Outcome:      proto.OutcomeFailed,
		Summary:      rep.Summary,
		AgentVersion: agentVersion(rep.Version),
		Timings: proto.Timings{
			Read: fromMS(rep.Timings.Read), Verify: fromMS(rep.Timings.Verify), Fetch: fromMS(rep.Timings.Fetch),
			Write: fromMS(rep.Timings.Write), Total: fromMS(rep.Timings.Total),
		},
	}
	if rep.Outcome == OutcomeReady {
		r.Outcome = proto.OutcomeReady
	}
	if len(rep.Problems) > 0 && r.Summary == "" {
		r.Summary = strings.Join(rep.Problems, "; ")
	}
	for _, c := range rep.Credentials {
		if len(r.Credentials) == proto.MaxReportEntries {
			break
		}
		cr := proto.CredentialReport{Name: c.Name, Size: uint64(max(c.Size, 0)), Delivery: proto.Delivery(token(c.Delivery)),
			Verification: proto.Verification(token(c.Verification)), Error: c.Problem}
		if len(c.SHA256) >= 2*proto.DigestPrefixLen {
			cr.SHA256Prefix = c.SHA256[:2*proto.DigestPrefixLen]
		}
		if c.Source == SourceChannel && c.Delivery == "" {
			cr.Delivery = proto.DeliveryChannel
		}
		r.Credentials = append(r.Credentials, cr)
	}
	return r
}

// token keeps s if it is a valid Delivery/Verification token, else maps it
// to one ("invalid").
func token(s string) string {
	if len(s) > proto.MaxTokenLen {
		return "invalid"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "invalid"
		}
	}
	return s
}

func fromMS(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// agentVersion is the version string the agent reports: printable ASCII,
// bounded, never empty.
func agentVersion(v string) string {
	if v == "" {
		v = "dev"
	}
	b := []byte("vmcred-guest " + v)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	if len(b) > proto.MaxVersionLen {
		b = b[:proto.MaxVersionLen]
	}
	return string(b)
}

// readBootID reads the kernel's boot ID, or "" if there is none to read.
func readBootID(root fs.FS) string {
	if root == nil {
		return ""
	}
	f, err := root.Open(bootIDPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, proto.MaxBootIDLen+1))
	if err != nil {
		return ""
	}
	id := strings.TrimSpace(string(b))
	if len(id) > proto.MaxBootIDLen {
		return ""
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return ""
		}
	}
	return id
}

// channelProblem is the problem text for a channel credential that did
// not arrive.
func channelProblem(e manifest.Entry, why string) string {
	return fmt.Sprintf("credential %q is listed in the manifest (%d bytes, by channel) but was not fetched: %s", e.Name, e.Size, why)
}
