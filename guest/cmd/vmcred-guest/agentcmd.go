package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/consumers"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
)

const agentUsage = "vmcred-guest agent --vm NAME|--vm-file FILE --trust-key FILE [--listen ADDR] [--peer-cid N] [source flags] [flags]"

// runAgent is the long-lived boot service (Type=notify): it loads what
// firmware carries, listens on a privileged vsock port for the host's
// sessions, sends READY=1 once the credstore is complete, and keeps
// listening for the life of the boot.
func runAgent(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("agent")
	var src sourceFlags
	src.register(fs)
	var pol policyFlags
	pol.register(fs)
	var st storeFlags
	st.register(fs)
	st.registerVM(fs, false)
	listen := fs.String("listen", "vsock::"+strconv.Itoa(agent.DefaultPort), "listen for the host's sessions on `ADDR`: vsock:CID:PORT with a privileged PORT (1-1023; only root can bind it, so the host knows who answers), or unix:PATH for a simulated VM")
	peerCID := fs.Uint32("peer-cid", address.CIDHost, "accept AF_VSOCK sessions only from context ID `N` (2, the host; 1 for a host process inside the guest over vsock loopback)")
	restarts := fs.String("consumers", "systemd", "after a rotation, restart or reload the running services that use a changed credential through `MANAGER`: systemd (its private socket, /run/systemd/private; nothing when not booted with systemd) or none (a simulated VM, a demo)")
	once := fs.Bool("once", false, "exit after the first session that leaves the credstore complete (or after the boot load, if firmware completes it)")
	if err := cli.Parse(env, fs, agentUsage, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("agent takes no arguments")
	}
	a, err := address.Parse(*listen)
	if err != nil {
		return cli.Usagef("--listen: %v", err)
	}
	if err := agent.CheckListen(a); err != nil {
		return cli.Usagef("--listen: %v", err)
	}
	if *restarts != "systemd" && *restarts != "none" {
		return cli.Usagef("--consumers %q: want systemd or none", *restarts)
	}
	cfg, err := config(env, fs, &src, &pol, &st)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readyOnce sync.Once
	refusals := &refusalLog{}
	onReport := func(rep agent.Report, err error) {
		if err != nil && rep.Store == nil && rep.ManifestSource == "" && rep.Fetch != nil {
			// A session refused before any value was read: anyone who
			// can reach the port can cause one, so these lines are
			// rate-limited.
			if n, ok := refusals.allow(time.Now()); ok {
				env.Log.Warn(oneLine(rep.Summary), logging.String("peer", rep.Fetch.Address), logging.Int("not_logged_before", n))
			}
			return
		}
		logReport(env.Log, rep)
		logSession(env.Log, rep)
		switch {
		case err != nil:
			env.Log.Warn(oneLine(rep.Summary))
			notifySelf(ctx, env, "STATUS="+oneLine("last session failed: "+err.Error()))
		case rep.Outcome == agent.OutcomeReady:
			env.Log.Info(rep.Summary, logging.String("credstore", rep.Credstore), logging.Int("generation", int(rep.Generation)))
			state := "STATUS=" + oneLine(rep.Summary)
			readyOnce.Do(func() { state = daemon.SdNotifyReady + "\n" + state })
			notifySelf(ctx, env, state)
			if *once {
				cancel()
			}
		default:
			env.Log.Info(rep.Summary)
			notifySelf(ctx, env, "STATUS="+oneLine(rep.Summary))
		}
	}
	booted := bootedWithSystemd
	if *restarts == "none" {
		booted = func() bool { return false }
	}
	ag, err := agent.New(cfg, agent.Options{OnReport: onReport, AcceptPeer: agent.PeerCID(*peerCID),
		Rotator: consumersRotator{log: env.Log, systemd: booted, Rotator: consumers.Rotator{
			Connect: consumers.ConnectSystemd,
			Options: consumers.Options{Store: st.credstore, Exclude: []string{"vmcred-guest.service"}},
			Log: func(o consumers.Outcome) {
				env.Log.Info("consumer "+o.Unit+": "+string(o.Action)+" "+o.Result, logging.Strings("credentials", o.Credentials))
			},
		}}})
	if err != nil {
		return err
	}
	// Bind before the boot load: the port is held for the whole boot, so
	// no other process can take it in between.
	l, err := agent.Listen(a)
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	env.Log.Info(fmt.Sprintf("listening for the host's sessions on %s", a), logging.String("vm", cfg.VM))
	if _, err := ag.Boot(); err != nil {
		env.Log.Warn("boot load: " + err.Error())
	}
	if err := ag.Serve(ctx, l); err != nil {
		return cli.WithCode(cli.ExitIO, fmt.Errorf("serve %s: %w", a, err))
	}
	return nil
}

// consumersRotator restarts or reloads, per policy, the running services
// that use a credential a session changed (guest/consumers, over D-Bus).
type consumersRotator struct {
	consumers.Rotator
	log *logging.Logger
	// systemd reports whether the guest was booted with systemd
	// (daemon's sd_booted test).
	systemd func() bool
}

// Rotated implements agent.Rotator.
func (r consumersRotator) Rotated(ctx context.Context, changes []agent.Change) ([]agent.UnitOutcome, error) {
	if !r.systemd() {
		// No service manager (a simulated VM, a container without
		// systemd): no unit can hold a credential, so none to restart.
		r.log.Info("no service manager to ask (--consumers none, or not booted with systemd): no consumer units to restart")
		return nil, nil
	}
	return r.Rotator.Rotated(ctx, changes)
}

// bootedWithSystemd is sd_booted(3): systemd creates /run/systemd/system
// early at boot, and nothing else does.
func bootedWithSystemd() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// refusalLog lets through at most refusalBurst refused-session lines a
// minute and counts the rest.
type refusalLog struct {
	mu         sync.Mutex
	window     time.Time
	n, dropped int
}

const refusalBurst = 10

func (r *refusalLog) allow(now time.Time) (droppedBefore int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.window) >= time.Minute {
		r.window, r.n = now, 0
	}
	r.n++
	if r.n > refusalBurst {
		r.dropped++
		return 0, false
	}
	d := r.dropped
	r.dropped = 0
	return d, true
}
