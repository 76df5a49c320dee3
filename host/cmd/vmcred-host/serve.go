package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/pflag"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/logging"
	"github.com/vmcred/vmcred/shared/notify"
	"go.uber.org/zap/zapcore"
)

const serveUsage = "vmcred-host serve --vm NAME --listen ADDR [--expect-cid N] [--max-conns N]"

// serveFlags are the notify receiver's flags.
type serveFlags struct {
	listen       string
	expectCID    uint32
	helloTimeout time.Duration
	maxConns     int
}

func (s *serveFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.listen, "listen", "", "receive guest PID 1's vmm.notify_socket messages on `ADDR`: vsock:CID:PORT (AF_VSOCK, QEMU vhost-vsock; PORT 0 for any free port) or unix:PATH (the host end of hybrid vsock, <socket>_<PORT>, or a simulated VM; never an abstract @name)")
	fs.Uint32Var(&s.expectCID, "expect-cid", 0, "refuse AF_VSOCK connections from any guest CID but `N`")
	fs.DurationVar(&s.helloTimeout, "hello-timeout", hostchannel.DefaultHelloTimeout, "drop a connection that has not sent its first byte within `DURATION`")
	fs.IntVar(&s.maxConns, "max-conns", hostchannel.DefaultMaxConns, "serve at most `N` connections at once; close the others at once")
}

// parseListen checks --listen and, for a relative Unix path, makes it
// absolute (the hybrid-vsock VMM resolves its own relative to its working
// directory; the log should say where it really is).
func (s *serveFlags) parseListen() (address.Address, error) {
	a, err := address.Parse(s.listen)
	if err != nil {
		return a, cli.Usagef("--listen: %v", err)
	}
	if err := a.CheckListen(); err != nil {
		return a, cli.Usagef("--listen: %v", err)
	}
	if a.Kind == address.Unix && strings.HasPrefix(a.Path, "@") {
		return a, cli.Usagef("--listen: %v", hostchannel.ErrAbstract)
	}
	if a.Kind == address.Unix && !filepath.IsAbs(a.Path) {
		abs, err := filepath.Abs(a.Path)
		if err != nil {
			return a, cli.Usagef("--listen: %v", err)
		}
		a.Path = abs
	}
	if a.IsVsock() && a.Kind != address.Vsock && a.Kind != address.VsockStream {
		return a, cli.Usagef("--listen: notify messages come as a stream: use vsock: or vsock-stream:")
	}
	return a, nil
}

// runServe receives guest PID 1's own vmm.notify_socket messages and logs
// them (the guest's boot progress), and passes its STATUS= on to this
// unit. It decides no readiness: that comes only from a session the host
// dialed (push, run), whose report `wait` reads. A restart loses nothing:
// serve keeps no state.
func (d deps) runServe(ctx context.Context, env *cli.Env, args []string) error {
	var sf serveFlags
	var vm string
	fs := cli.NewFlagSet("serve")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME` (required)")
	sf.register(fs)
	if err := cli.Parse(env, fs, serveUsage, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return cli.Usagef("serve takes no arguments")
	case vm == "":
		return cli.Usagef("serve: --vm NAME is required")
	case sf.listen == "":
		return cli.Usagef("serve: --listen ADDR is required")
	}
	if err := credential.ValidateName(vm); err != nil {
		return cli.Usagef("--vm: %v", err)
	}
	a, err := sf.parseListen()
	if err != nil {
		return err
	}
	l, err := hostchannel.Listen(a)
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	defer l.Close()
	log := env.Log.With(logging.String("vm", vm))
	drops := &dropLog{log: log}
	srv, err := hostchannel.New(hostchannel.Config{
		ExpectCID:    sf.expectCID,
		MaxConns:     sf.maxConns,
		HelloTimeout: sf.helloTimeout,
		Events: hostchannel.Events{
			Notify: func(p hostchannel.Peer, m notify.Message, end string) {
				st, _ := m.Status()
				log.Info("guest systemd: notify message", logging.Bool("ready", m.Ready()), logging.String("status", clean(st)), logging.Int("fields", len(m.Fields)), logging.String("ended_by", end), logging.Stringer("peer", p))
				if st != "" {
					_ = sdNotify("STATUS=" + oneLine("guest "+vm+": "+clean(st)))
				}
			},
			Dropped: drops.dropped,
		},
	})
	if err != nil {
		return err
	}
	_ = sdNotify("READY=1\nSTATUS=" + oneLine("receiving guest "+vm+"'s notify messages on "+l.Bound.String()))
	log.Info(fmt.Sprintf("receiving guest PID 1's notify messages on %s", l.Bound))
	if err := srv.Serve(ctx, l); err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	return nil
}

// clean keeps guest-supplied text to printable characters and a bounded
// length for the log.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, " "))
	if len(s) > 256 {
		s = s[:256] + "…"
	}
	return s
}

// oneLine keeps a STATUS= value on one line.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 1000 {
		s = s[:1000]
	}
	return s
}

// dropLog logs dropped connections, at most dropBurst per second; the
// rest are counted and the count logged with the next line.
type dropLog struct {
	log *logging.Logger

	mu         sync.Mutex
	window     time.Time
	n          int
	suppressed int
}

const dropBurst = 10

func (d *dropLog) dropped(p hostchannel.Peer, err error) {
	d.mu.Lock()
	now := time.Now()
	if now.Sub(d.window) >= time.Second {
		d.window, d.n = now, 0
	}
	d.n++
	if d.n > dropBurst {
		d.suppressed++
		d.mu.Unlock()
		return
	}
	suppressed := d.suppressed
	d.suppressed = 0
	d.mu.Unlock()
	fields := []zapcore.Field{logging.Stringer("peer", p)}
	if suppressed > 0 {
		fields = append(fields, logging.Int("not_logged_before", suppressed))
	}
	lvl := d.log.Warn
	if errors.Is(err, hostchannel.ErrBusy) || errors.Is(err, hostchannel.ErrEmpty) {
		lvl = d.log.Info
	}
	lvl("dropped connection from "+p.String()+": "+err.Error(), fields...)
}

// sdNotify tells this process's own service manager (Type=notify units).
// go-systemd's SdNotify speaks unixgram to $NOTIFY_SOCKET; the host's
// service manager never uses vsock, so that is all it needs.
func sdNotify(state string) error {
	_, err := daemon.SdNotify(false, state)
	return err
}
