package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/shared/address"
)

// Config is one push: where to dial and what to send.
type Config struct {
	Address address.Address
	Request Request
	// Dial opens one connection (DialOnce when nil).
	Dial DialFunc
}

// Outcome is a push's result: the session that brought a report, and how
// many connections it took.
type Outcome struct {
	Result
	Attempts int
}

// Push dials cfg.Address and runs sessions until one brings the agent's
// REPORT, or ctx ends. It dials again, with backoff, after a refusal (the
// agent is not listening yet), a busy agent, and a connection that broke
// before the REPORT (a guest that rebooted): each new session has a new
// challenge, so nothing sent before can be replayed. Any other error ends
// it. The report says whether the guest is ready; Push's error is only for
// not getting one.
func Push(ctx context.Context, cfg Config) (Outcome, error) {
	var out Outcome
	dial := cfg.Dial
	if dial == nil {
		dial = DialOnce
	}
	wait := MinBackoff
	for {
		c, n, err := Dial(ctx, cfg.Address, dial)
		out.Attempts += n
		if err != nil {
			return out, err
		}
		res, err := Session(ctx, c, cfg.Request)
		c.Close()
		if err == nil {
			out.Result = res
			return out, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			if ctx.Err() != nil {
				return out, fmt.Errorf("%w (last session: %w)", ctx.Err(), err)
			}
			return out, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return out, fmt.Errorf("%w (last session: %w)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, MaxBackoff)
	}
}

// retryable says whether a new session may succeed where err ended one:
// the agent was busy, or the connection closed or was reset before the
// REPORT (the VMM's forwarding ended, the guest rebooted).
func retryable(err error) bool {
	switch {
	case errors.Is(err, ErrBusy), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return true
	case errors.Is(err, os.ErrDeadlineExceeded):
		return false
	}
	return false
}
