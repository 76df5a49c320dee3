package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/pflag"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/logging"
	"github.com/vmcred/vmcred/shared/notify"
	"go.uber.org/zap/zapcore"
)

const serveUsage = "vmcred-host serve --vm NAME --listen ADDR [--runtime-dir DIR] [--status-dir DIR] [--expect-cid N] [--allow-refetch] [--exit-on-failure]"

// serveFlags are the channel server's flags, shared by serve and run.
type serveFlags struct {
	listen        string
	statusDir     string
	expectCID     uint32
	allowRefetch  bool
	exitOnFailure bool
	helloTimeout  time.Duration
	reportTimeout time.Duration
	maxConns      int
}

func (s *serveFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.listen, "listen", "", "serve the channel on `ADDR`: vsock:CID:PORT (AF_VSOCK, QEMU vhost-vsock; CID empty or any for every local CID, PORT 0 for any free port) or unix:PATH (the host end of hybrid vsock, <socket>_<PORT>, or a simulated VM)")
	fs.StringVar(&s.statusDir, "status-dir", readiness.DefaultStatusDir, "write the VM's readiness to `DIR`/NAME.json (mode 0600, no values), where vmcred-host wait reads it")
	fs.Uint32Var(&s.expectCID, "expect-cid", 0, "refuse AF_VSOCK connections from any guest CID but `N`")
	fs.BoolVar(&s.allowRefetch, "allow-refetch", false, "serve a boot's channel credentials more than once (a guest that reboots with the same manifest)")
	fs.BoolVar(&s.exitOnFailure, "exit-on-failure", false, "exit 1 (run: stop the hypervisor) when the guest reports a failed load")
	fs.DurationVar(&s.helloTimeout, "hello-timeout", hostchannel.DefaultHelloTimeout, "drop a connection that has not sent a whole HELLO or notify message within `DURATION`")
	fs.DurationVar(&s.reportTimeout, "report-timeout", hostchannel.DefaultReportTimeout, "wait this `DURATION` after sending the credentials for the guest's report")
	fs.IntVar(&s.maxConns, "max-conns", hostchannel.DefaultMaxConns, "serve at most `N` connections at once; close the others at once")
}

// parseListen checks --listen and, for a relative Unix path, makes it
// absolute (the hybrid-vsock VMM resolves its own relative to its working
// directory; the log and status should say where it really is).
func (s *serveFlags) parseListen() (address.Address, error) {
	a, err := address.Parse(s.listen)
	if err != nil {
		return a, cli.Usagef("--listen: %v", err)
	}
	if err := a.CheckListen(); err != nil {
		return a, cli.Usagef("--listen: %v", err)
	}
	if a.Kind == address.Unix && !strings.HasPrefix(a.Path, "@") && !filepath.IsAbs(a.Path) {
		abs, err := filepath.Abs(a.Path)
		if err != nil {
			return a, cli.Usagef("--listen: %v", err)
		}
		a.Path = abs
	}
	if a.IsVsock() && a.Kind != address.Vsock && a.Kind != address.VsockStream {
		return a, cli.Usagef("--listen: the channel is a stream: use vsock: or vsock-stream:")
	}
	return a, nil
}

// guestDials is the address a guest dials to reach a listener bound at b,
// when pack was given none: vsock-stream:2:PORT for AF_VSOCK (the host is
// CID 2 from the guest), the socket itself for a Unix listener (a
// simulated VM; a hybrid-vsock guest dials vsock-stream:2:PORT, which
// only --channel can say).
func guestDials(b address.Address) string {
	if b.IsVsock() {
		return address.Address{Kind: address.VsockStream, CID: address.CIDHost, Port: b.Port}.String()
	}
	return b.String()
}

func (d deps) runServe(ctx context.Context, env *cli.Env, args []string) error {
	var sf serveFlags
	var vm, runtimeDir string
	fs := cli.NewFlagSet("serve")
	fs.StringVar(&vm, "vm", "", "the VM's `NAME` (required)")
	sf.register(fs)
	fs.StringVar(&runtimeDir, "runtime-dir", "", "read the serve state pack wrote in `DIR` (default $RUNTIME_DIRECTORY); it is read again for every guest, so a new pack needs no restart")
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
	if runtimeDir == "" && env.Getenv != nil {
		runtimeDir, _, _ = strings.Cut(env.Getenv("RUNTIME_DIRECTORY"), ":")
	}
	if runtimeDir == "" {
		return cli.Usagef("serve: give --runtime-dir DIR, the one pack wrote its serve state to")
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
	state := func() (*hostchannel.State, error) {
		st, err := hostchannel.ReadState(runtimeDir)
		if err != nil {
			return nil, err
		}
		if st.VM != vm {
			return nil, fmt.Errorf("serve state in %s is for vm %q, not %q", runtimeDir, st.VM, vm)
		}
		return st, checkTokenless(st, l.Bound, sf.expectCID)
	}
	status := readiness.Status{VM: vm, Listen: l.Bound.String(), ServerPID: os.Getpid()}
	if st, err := state(); err == nil {
		status.Channel = st.Channel
	} else {
		env.Log.Warn(fmt.Sprintf("vm %s: no usable serve state yet (%v); it is read again when the guest connects", vm, err))
	}
	rec, err := readiness.NewRecorder(sf.statusDir, status, sdNotify, d.now)
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	env.Log.Info(fmt.Sprintf("vm %s: serving the channel on %s; status in %s", vm, l.Bound, readiness.Path(sf.statusDir, vm)))
	return serveVM(ctx, env, &sf, vm, l, state, rec, sf.exitOnFailure)
}

// checkTokenless refuses a tokenless manifest where anyone but the VM
// could connect: AF_VSOCK without --expect-cid.
func checkTokenless(st *hostchannel.State, bound address.Address, expectCID uint32) error {
	if st.Tokenless && bound.IsVsock() && expectCID == 0 {
		return errors.New("the manifest carries no channel token (cloud-hypervisor without --ch-api, or bootstrap mode: --manifest-by-channel, firecracker); on AF_VSOCK that needs --expect-cid")
	}
	return nil
}

// serveVM serves until ctx ends (nil), or, with exitOnFailure, until the
// guest reports a failed load (an exit-1 error).
func serveVM(ctx context.Context, env *cli.Env, sf *serveFlags, vm string, l *hostchannel.Listener, state func() (*hostchannel.State, error), rec *readiness.Recorder, exitOnFailure bool) error {
	srv, err := newServer(env, sf, vm, state, rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, l) }()
	done, ready := rec.Outcome()
	if !exitOnFailure {
		done = nil
	}
	select {
	case err := <-errc:
		if err != nil {
			return cli.WithCode(cli.ExitIO, err)
		}
		return nil
	case <-ctx.Done():
	case <-done:
		if !ready() {
			cancel()
			<-errc
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s (--exit-on-failure)", rec.Status().Summary))
		}
		<-ctx.Done()
	}
	cancel()
	if err := <-errc; err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	return nil
}

// newServer builds the channel server, wired to the recorder and to log
// lines (dropped peers rate-limited: a hostile guest must not flood the
// journal).
func newServer(env *cli.Env, sf *serveFlags, vm string, state func() (*hostchannel.State, error), rec *readiness.Recorder) (*hostchannel.Server, error) {
	log := env.Log.With(logging.String("vm", vm))
	ev := rec.Events()
	drops := &dropLog{log: log}
	return hostchannel.New(hostchannel.Config{
		State:         state,
		AllowRefetch:  sf.allowRefetch,
		ExpectCID:     sf.expectCID,
		MaxConns:      sf.maxConns,
		HelloTimeout:  sf.helloTimeout,
		ReportTimeout: sf.reportTimeout,
		Events: hostchannel.Events{
			Notify: func(p hostchannel.Peer, m notify.Message, end string) {
				ev.Notify(p, m, end)
				st, _ := m.Status()
				log.Info("guest systemd: notify message", logging.Bool("ready", m.Ready()), logging.String("status", st), logging.Int("fields", len(m.Fields)), logging.String("ended_by", end), logging.Stringer("peer", p))
			},
			Fetched: func(p hostchannel.Peer, h hostchannel.Hello, names []string, bytes int64) {
				ev.Fetched(p, h, names, bytes)
				log.Info(fmt.Sprintf("sent %d channel credential(s), %d bytes", len(names), bytes), logging.Strings("credentials", names), logging.String("boot_id", h.BootID), logging.Stringer("peer", p))
			},
			Report: func(p hostchannel.Peer, h hostchannel.Hello, r proto.Report) string {
				ack := ev.Report(p, h, r)
				st := rec.Status()
				if r.Outcome == proto.OutcomeReady {
					log.Info(st.Summary, logging.String("agent", r.AgentVersion), logging.Stringer("peer", p))
				} else {
					log.Error(st.Summary, logging.Strings("failures", st.Failures), logging.Stringer("peer", p))
				}
				if err := rec.Err(); err != nil {
					log.Error("write status: " + err.Error())
				}
				return ack
			},
			Dropped: drops.dropped,
		},
	})
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
	if errors.Is(err, hostchannel.ErrBusy) || errors.Is(err, hostchannel.ErrEmpty) || errors.Is(err, hostchannel.ErrNoReport) {
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

// runServer is run's channel server: bound before pack, so that an
// AF_VSOCK port 0 is known when the manifest is built, and serving while
// the hypervisor runs. A nil *runServer (no --listen) does nothing.
type runServer struct {
	sf     *serveFlags
	l      *hostchannel.Listener
	rec    *readiness.Recorder
	cancel context.CancelFunc
	done   chan error
}

// bindForRun binds --listen, if given, and makes it the channel pack puts
// in the manifest unless --channel says otherwise.
func bindForRun(sf *serveFlags, f *packFlags) (*runServer, error) {
	if sf.listen == "" {
		if sf.exitOnFailure || sf.allowRefetch || sf.expectCID != 0 {
			return nil, cli.Usagef("run: --exit-on-failure, --allow-refetch and --expect-cid need --listen ADDR")
		}
		return nil, nil
	}
	a, err := sf.parseListen()
	if err != nil {
		return nil, err
	}
	l, err := hostchannel.Listen(a)
	if err != nil {
		return nil, cli.WithCode(cli.ExitIO, err)
	}
	if f.channel == "" {
		f.channel = guestDials(l.Bound)
	}
	return &runServer{sf: sf, l: l}, nil
}

// start serves pk's channel until stop.
func (r *runServer) start(env *cli.Env, now func() time.Time, f *packFlags, pk *packed) error {
	if r == nil {
		return nil
	}
	st := pk.serve
	if st == nil {
		return errors.New("run: a channel without serve state (a bug)")
	}
	if err := checkTokenless(st, r.l.Bound, r.sf.expectCID); err != nil {
		return cli.Usagef("run: %v", err)
	}
	rec, err := readiness.NewRecorder(r.sf.statusDir, readiness.Status{VM: f.vm, Listen: r.l.Bound.String(), Channel: st.Channel, ServerPID: os.Getpid()}, sdNotify, now)
	if err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	srv, err := newServer(env, r.sf, f.vm, func() (*hostchannel.State, error) { return st, nil }, rec)
	if err != nil {
		return err
	}
	// Not run's context: the server outlives a SIGTERM until the
	// hypervisor, which gets the signal, has exited (its guest may still
	// report on the way down).
	ctx, cancel := context.WithCancel(context.Background())
	r.rec, r.cancel, r.done = rec, cancel, make(chan error, 1)
	go func() { r.done <- srv.Serve(ctx, r.l) }()
	env.Log.Info(fmt.Sprintf("vm %s: serving the channel on %s (the guest dials %s); status in %s", f.vm, r.l.Bound, st.Channel, readiness.Path(r.sf.statusDir, f.vm)))
	return nil
}

// stop ends the server and closes the listener.
func (r *runServer) stop(env *cli.Env) {
	if r == nil {
		return
	}
	if r.cancel != nil {
		r.cancel()
		if err := <-r.done; err != nil {
			env.Log.Warn("channel server: " + err.Error())
		}
	}
	r.l.Close()
}

// afterStart wraps run's AfterStart hook: with --exit-on-failure it then
// waits for the guest's report, and a failed one stops the hypervisor.
func (r *runServer) afterStart(next func(context.Context, <-chan struct{}) error) func(context.Context, <-chan struct{}) error {
	if r == nil || !r.sf.exitOnFailure {
		return next
	}
	return func(ctx context.Context, exited <-chan struct{}) error {
		if next != nil {
			if err := next(ctx, exited); err != nil {
				return err
			}
		}
		done, ready := r.rec.Outcome()
		select {
		case <-done:
			if !ready() {
				return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s; stopping the hypervisor (--exit-on-failure)", r.rec.Status().Summary))
			}
		case <-exited:
		case <-ctx.Done():
		}
		return nil
	}
}
