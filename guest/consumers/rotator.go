package consumers

import (
	"context"
	"fmt"

	"github.com/vmcred/vmcred/guest/agent"
)

// Rotator is the agent's agent.Rotator over a service manager: after a
// rotation it restarts or reloads, per policy, the running services that
// use a changed credential (Apply), within the session's deadline.
type Rotator struct {
	// Connect opens the service manager (systemd's private socket: see
	// ConnectSystemd). Tests pass a fake.
	Connect func(ctx context.Context) (Systemd, func(), error)
	// Options go to Apply (Store, Exclude).
	Options Options
	// Log, when set, hears one line per unit.
	Log func(o Outcome)
}

// ConnectSystemd is Rotator.Connect for the real systemd.
func ConnectSystemd(ctx context.Context) (Systemd, func(), error) {
	sd, err := Connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	return sd, sd.Close, nil
}

// Rotated implements agent.Rotator. ctx carries the session's deadline
// (the host's --timeout): restarts still running at it end as "timeout",
// and units after it are not attempted.
func (r Rotator) Rotated(ctx context.Context, changes []agent.Change) ([]agent.UnitOutcome, error) {
	sd, closeFn, err := r.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("restart consumers: %w", err)
	}
	defer closeFn()
	cs := make([]Change, 0, len(changes))
	for _, c := range changes {
		cs = append(cs, Change{Name: c.Name, Policy: Policy(c.Policy.String())})
	}
	outcomes, err := Apply(ctx, sd, cs, r.Options)
	units := make([]agent.UnitOutcome, 0, len(outcomes))
	for _, o := range outcomes {
		if r.Log != nil {
			r.Log(o)
		}
		units = append(units, agent.UnitOutcome{Unit: o.Unit, Action: string(o.Action), Credentials: o.Credentials, Result: o.Result, OK: o.OK(), Error: o.Error})
	}
	return units, err
}
