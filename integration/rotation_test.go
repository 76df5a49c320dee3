package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/consumers"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/guest/trustkey"
	"github.com/vmcred/vmcred/host/push"
	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"golang.org/x/sys/unix"
)

// fakeSystemd stands for systemd's D-Bus API (consumers.Systemd) in the
// simulated VM: services with LoadCredential=NAME settings and a main PID
// each; a restart gives a new PID, or fails when the unit is set to.
// guest/consumers' own logic (which units, which action, waiting for
// them) runs for real on top of it; the tier-2 VM test does the same
// against systemd 252.
type fakeSystemd struct {
	mu      sync.Mutex
	units   map[string]*fakeUnit
	jobs    []string
	nextPID int
}

type fakeUnit struct {
	load  []string
	pid   int
	state string
	fail  bool
	// hang: a restart leaves the unit activating for good.
	hang bool
}

func newFakeSystemd(units map[string][]string) *fakeSystemd {
	f := &fakeSystemd{units: map[string]*fakeUnit{}, nextPID: 100}
	for name, load := range units {
		f.nextPID++
		f.units[name] = &fakeUnit{load: load, pid: f.nextPID, state: "active"}
	}
	return f
}

func (f *fakeSystemd) ActiveServices(context.Context) ([]consumers.UnitState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []consumers.UnitState
	for name, u := range f.units {
		if u.state == "active" || u.state == "activating" {
			out = append(out, consumers.UnitState{Name: name, ActiveState: u.state, SubState: "running"})
		}
	}
	return out, nil
}

func (f *fakeSystemd) Credentials(_ context.Context, unit string) (consumers.UnitCredentials, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var c consumers.UnitCredentials
	for _, n := range f.units[unit].load {
		c.Load = append(c.Load, consumers.LoadCredential{ID: n, Path: n})
	}
	return c, nil
}

func (f *fakeSystemd) job(kind, unit string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobs = append(f.jobs, kind+" "+unit)
	u := f.units[unit]
	if u.fail {
		u.state = "failed"
		return "failed", nil
	}
	if u.hang {
		u.state = "activating"
	}
	if kind == "restart" {
		f.nextPID++
		u.pid = f.nextPID
	}
	return "done", nil
}

func (f *fakeSystemd) Restart(_ context.Context, unit string) (string, error) {
	return f.job("restart", unit)
}

func (f *fakeSystemd) Reload(_ context.Context, unit string) (string, error) {
	return f.job("reload", unit)
}

func (f *fakeSystemd) State(_ context.Context, unit string) (consumers.UnitState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return consumers.UnitState{Name: unit, ActiveState: f.units[unit].state}, nil
}

func (f *fakeSystemd) snapshot() (jobs []string, pids map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pids = map[string]int{}
	for n, u := range f.units {
		pids[n] = u.pid
	}
	return slices.Clone(f.jobs), pids
}

// rotVM is a simulated VM whose agent runs in this process, so that its
// consumers are fakeSystemd's: the credstore on tmpfs, the agent's socket
// in a private folder (standing for its privileged vsock port), and the
// real vmcred-host binary as the host.
type rotVM struct {
	work, parent, store, status, sock, key, pub, hostStatus string
	priv                                                    ed25519.PrivateKey
	sd                                                      *fakeSystemd
	ag                                                      *agent.Agent
}

func startRotVM(t *testing.T, sd *fakeSystemd) *rotVM {
	t.Helper()
	work := shortDir(t)
	v := &rotVM{work: work, parent: shmDir(t), sd: sd, status: filepath.Join(work, "gst"), hostStatus: filepath.Join(work, "host-status")}
	// The store's parent stands for /run: root's, 0755.
	if err := os.Chmod(v.parent, 0o755); err != nil {
		t.Fatal(err)
	}
	v.store = filepath.Join(v.parent, "credstore")
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "k")); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	v.key, v.pub = filepath.Join(work, "k.key"), filepath.Join(work, "k.pub")
	keys, err := trustkey.Read([]string{v.pub})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(v.key)
	if err != nil {
		t.Fatal(err)
	}
	if v.priv, err = manifest.ParsePrivateKey(b); err != nil {
		t.Fatal(err)
	}
	agentDir := filepath.Join(work, "agent")
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	v.sock = filepath.Join(agentDir, "a.sock")
	cfg := agent.Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: strings.TrimPrefix(filepath.Join(work, "none.dmi"), "/")},
		Credstore: v.store, StatusDir: v.status, TrustKeys: keys, VM: "demo", Version: "test"}
	rot := consumers.Rotator{
		Connect: func(context.Context) (consumers.Systemd, func(), error) { return sd, func() {}, nil },
		Options: consumers.Options{Store: v.store, Exclude: []string{"vmcred-guest.service"}, Poll: time.Millisecond},
	}
	if v.ag, err = agent.New(cfg, agent.Options{Rotator: rot}); err != nil {
		t.Fatal(err)
	}
	l, err := agent.Listen(address.Address{Kind: address.Unix, Path: v.sock})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); v.ag.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return v
}

// push runs the real `vmcred-host push` with vals as secret files.
func (v *rotVM) push(t *testing.T, vals map[string][]byte, extra ...string) result {
	t.Helper()
	dir := filepath.Join(v.work, "src-"+fmt.Sprint(time.Now().UnixNano()))
	args := append([]string{"push", "--vm", "demo", "--connect", "unix:" + v.sock, "--sign-key", v.key, "--status-dir", v.hostStatus, "--timeout", "15s"}, extra...)
	return run(t, built.host, nil, append(args, writeSecretFiles(t, dir, vals)...)...)
}

// storeFile is one credstore file: content and inode.
type storeFile struct {
	data []byte
	ino  uint64
}

func snapshotStore(t *testing.T, dir string) map[string]storeFile {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]storeFile{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = storeFile{data: b, ino: fi.Sys().(*syscall.Stat_t).Ino}
	}
	return out
}

func sameStore(a, b map[string]storeFile) bool {
	if len(a) != len(b) {
		return false
	}
	for n, f := range a {
		g, ok := b[n]
		if !ok || g.ino != f.ino || !bytes.Equal(g.data, f.data) {
			return false
		}
	}
	return true
}

// TestRotationRestartsExactlyTheConsumers (issue 15, items 1-3): a push
// of a new API_KEY swaps the store, restarts the one service that uses
// API_KEY, leaves the service of the unchanged DB_PASSWORD alone (same
// PID, same inode), removes a credential no longer pushed, and reports
// each unit; a unit that does not come back fails the push naming it;
// --dry-run shows names and sizes only and changes nothing.
func TestRotationRestartsExactlyTheConsumers(t *testing.T) {
	sd := newFakeSystemd(map[string][]string{"api.service": {"API_KEY"}, "db.service": {"DB_PASSWORD"}, "idle.service": {"OTHER"}})
	v := startRotVM(t, sd)
	apiV1, apiV2, db := randomText(), randomText(), randomText()
	if r := v.push(t, map[string][]byte{"API_KEY": apiV1, "DB_PASSWORD": db, "OLD": []byte("old")}); r.code != 0 {
		t.Fatalf("first push: exit %d: %s", r.code, r.stderr)
	}
	if jobs, _ := sd.snapshot(); len(jobs) != 0 {
		t.Fatalf("the first set restarted %v; its consumers start after READY=1", jobs)
	}
	before := snapshotStore(t, v.store)
	_, pids := sd.snapshot()

	// Dry run: names and sizes, against the host's record; nothing moves.
	dry := v.push(t, map[string][]byte{"API_KEY": apiV2, "DB_PASSWORD": db, "NEW": []byte("12345")}, "--dry-run")
	if dry.code != 0 {
		t.Fatalf("dry run: exit %d: %s", dry.code, dry.stderr)
	}
	for _, want := range []string{"compared with generation 1", "the agent holds generation 1; a push would sign generation 2",
		fmt.Sprintf("would change: API_KEY (%d bytes, was %d)", len(apiV2), len(apiV1)), "would add:    NEW (5 bytes)", "would remove: OLD (was 3 bytes)", "1 unchanged"} {
		if !strings.Contains(dry.stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, dry.stdout)
		}
	}
	for _, v := range [][]byte{apiV1, apiV2, db} {
		sum := sha256.Sum256(v)
		if strings.Contains(dry.stdout+dry.stderr, string(v)) || strings.Contains(dry.stdout+dry.stderr, fmt.Sprintf("%x", sum[:8])) {
			t.Errorf("dry run printed a value or its digest")
		}
	}
	if !sameStore(before, snapshotStore(t, v.store)) {
		t.Error("dry run changed the credstore")
	}

	// The rotation.
	r := v.push(t, map[string][]byte{"API_KEY": apiV2, "DB_PASSWORD": db})
	if r.code != 0 {
		t.Fatalf("rotation: exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, "restart api.service (API_KEY): active") {
		t.Errorf("push output does not list api.service:\n%s", r.stdout)
	}
	after := snapshotStore(t, v.store)
	jobs, pids2 := sd.snapshot()
	if !slices.Equal(jobs, []string{"restart api.service"}) {
		t.Errorf("jobs %v, want exactly [restart api.service]", jobs)
	}
	if pids2["db.service"] != pids["db.service"] || pids2["api.service"] == pids["api.service"] {
		t.Errorf("main PIDs before %v, after %v: want api.service's new and db.service's kept", pids, pids2)
	}
	if !bytes.Equal(after["API_KEY"].data, apiV2) {
		t.Error("API_KEY does not hold the new value")
	}
	if after["DB_PASSWORD"].ino != before["DB_PASSWORD"].ino {
		t.Error("the unchanged DB_PASSWORD got a new inode")
	}
	if _, ok := after["OLD"]; ok {
		t.Error("OLD, no longer pushed, is still in the credstore")
	}
	rep, err := agent.ReadStatus(v.status)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rotation == nil || rep.Rotation.From != 1 || rep.Rotation.To != 2 || len(rep.Rotation.Units) != 1 || rep.Rotation.Units[0].Unit != "api.service" ||
		!slices.Equal(rep.Rotation.Unchanged, []string{"DB_PASSWORD"}) || !slices.Equal(rep.Rotation.Removed, []string{"OLD"}) {
		t.Errorf("status rotation = %+v", rep.Rotation)
	}
	for _, cmd := range [][]string{{"status"}, {"list"}} {
		out := run(t, built.guest, nil, append(cmd, "--status-dir", v.status)...)
		if !strings.Contains(out.stdout, "2, arrived") || !strings.Contains(out.stdout, "restart api.service (API_KEY): active") {
			t.Errorf("vmcred-guest %s does not show the generation and the unit:\n%s%s", cmd[0], out.stdout, out.stderr)
		}
	}

	// A consumer that does not come back: exit 1, naming it; the new set
	// stays in place.
	sd.mu.Lock()
	sd.units["api.service"].fail = true
	sd.mu.Unlock()
	apiV3 := randomText()
	r = v.push(t, map[string][]byte{"API_KEY": apiV3, "DB_PASSWORD": db})
	if r.code != 1 || !strings.Contains(r.stderr, "api.service") {
		t.Errorf("push with a failing consumer: exit %d, want 1 naming api.service: %s", r.code, r.stderr)
	}
	if got := snapshotStore(t, v.store)["API_KEY"].data; !bytes.Equal(got, apiV3) {
		t.Error("after a consumer failed, the new API_KEY is not in place")
	}
	if v.ag.Generation() != 3 {
		t.Errorf("agent generation %d, want 3", v.ag.Generation())
	}

	// The host lost its state folder: the next push starts above the
	// generation the agent reports.
	if err := os.RemoveAll(filepath.Join(v.hostStatus, "pushed")); err != nil {
		t.Fatal(err)
	}
	sd.mu.Lock()
	sd.units["api.service"].fail, sd.units["api.service"].state = false, "active"
	sd.mu.Unlock()
	r = v.push(t, map[string][]byte{"API_KEY": randomText(), "DB_PASSWORD": db})
	if r.code != 0 || v.ag.Generation() != 4 {
		t.Errorf("push after a lost state folder: exit %d, agent generation %d, want 0 and 4: %s", r.code, v.ag.Generation(), r.stderr)
	}
	if rep, err := agent.ReadStatus(v.status); err != nil || rep.Rotation == nil || rep.Rotation.BudgetMS <= 0 || rep.Rotation.BudgetMS > 15000 {
		t.Errorf("the rotation's budget is not push's --timeout 15s: %+v %v", rep.Rotation, err)
	}
}

// TestRotationTimeoutCoversRestarts (issue 15, item 5): push's --timeout
// bounds the whole session, restarts included. A consumer that never
// comes back after its restart is given up by the agent at the deadline
// the signed manifest carries, in time for its report: push exits 1
// naming the unit ("timeout"), not 4 with no report.
func TestRotationTimeoutCoversRestarts(t *testing.T) {
	sd := newFakeSystemd(map[string][]string{"stuck.service": {"API_KEY"}})
	v := startRotVM(t, sd)
	if r := v.push(t, map[string][]byte{"API_KEY": randomText()}); r.code != 0 {
		t.Fatalf("first push: %s", r.stderr)
	}
	sd.mu.Lock()
	sd.units["stuck.service"].hang = true
	sd.mu.Unlock()
	r := v.push(t, map[string][]byte{"API_KEY": randomText()}, "--timeout", "5s")
	if r.code != 1 || !strings.Contains(r.stderr, "stuck.service") || !strings.Contains(r.stderr+r.stdout, "timeout") {
		t.Errorf("push --timeout 5s with a consumer that never comes back: exit %d, want 1 naming stuck.service and timeout:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// rawSession is a hand-made host session: sign gen for vm with key (or
// send envelope as it is), send vals, return the report and the envelope.
func rawSession(t *testing.T, sock, vm string, key ed25519.PrivateKey, gen func(agentGen uint64) uint64, vals map[string][]byte, envelope []byte) (proto.Report, []byte) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := proto.ReadMagic(c); err != nil {
		t.Fatal(err)
	}
	conn := proto.NewHost(c)
	ch, err := conn.ReadChallenge()
	if err != nil {
		t.Fatal(err)
	}
	var send []proto.Credential
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range vals {
			if !yield(n) {
				return
			}
		}
	})
	if envelope == nil {
		b := manifest.NewBuilder(vm, time.Now())
		b.SetSession(ch.Nonce, gen(ch.Generation))
		for _, n := range names {
			if err := b.Add(n, credential.NewSecret(vals[n]), manifest.DeliveryChannel, false); err != nil {
				t.Fatal(err)
			}
		}
		if envelope, err = b.Envelope(key); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		send = append(send, proto.Credential{Name: n, Value: credential.NewSecret(vals[n])})
	}
	if err := conn.WriteManifest(envelope); err != nil {
		t.Fatal(err)
	}
	_ = conn.WriteCredentials(send)
	rep, err := conn.ReadReport()
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.WriteAck("recorded")
	return rep, envelope
}

// TestRotationRefusedChangesNothing (issue 15, item 2, and the replay
// attack): a session with an older or the same generation, for another
// VM, signed by another key, or replayed from an earlier connection is
// refused: the credstore keeps every byte and inode, nothing is
// restarted, the agent keeps its generation.
func TestRotationRefusedChangesNothing(t *testing.T) {
	sd := newFakeSystemd(map[string][]string{"api.service": {"API_KEY"}})
	v := startRotVM(t, sd)
	good := map[string][]byte{"API_KEY": randomText()}
	if rep, _ := rawSession(t, v.sock, "demo", v.priv, func(g uint64) uint64 { return g + 1 }, good, nil); rep.Outcome != proto.OutcomeReady {
		t.Fatalf("first session: %s", rep.Summary)
	}
	rep, recorded := rawSession(t, v.sock, "demo", v.priv, func(g uint64) uint64 { return g + 4 }, map[string][]byte{"API_KEY": randomText()}, nil)
	if rep.Outcome != proto.OutcomeReady || rep.Generation != 5 {
		t.Fatalf("rotation to 5: %s (generation %d)", rep.Summary, rep.Generation)
	}
	jobs0, pids0 := sd.snapshot()
	before := snapshotStore(t, v.store)
	_, other, _ := ed25519.GenerateKey(nil)
	bad := map[string][]byte{"API_KEY": randomText()}
	for _, tc := range []struct {
		name     string
		vm       string
		key      ed25519.PrivateKey
		gen      func(uint64) uint64
		envelope []byte
		want     string
	}{
		{"older generation", "demo", v.priv, func(g uint64) uint64 { return g - 1 }, nil, "older than the 5"},
		{"same generation", "demo", v.priv, func(g uint64) uint64 { return g }, nil, "must bring a higher one"},
		{"another VM", "other-vm", v.priv, func(g uint64) uint64 { return g + 1 }, nil, "other-vm"},
		{"another key", "demo", other, func(g uint64) uint64 { return g + 1 }, nil, "trusted"},
		{"replayed session", "demo", v.priv, nil, recorded, "replayed"},
	} {
		rep, _ := rawSession(t, v.sock, tc.vm, tc.key, tc.gen, bad, tc.envelope)
		if rep.Outcome != proto.OutcomeFailed || !strings.Contains(rep.Summary, tc.want) {
			t.Errorf("%s: outcome %s, %q; want refused saying %q", tc.name, rep.Outcome, rep.Summary, tc.want)
		}
		if !sameStore(before, snapshotStore(t, v.store)) {
			t.Errorf("%s: the credstore changed", tc.name)
		}
		if jobs, pids := sd.snapshot(); !slices.Equal(jobs, jobs0) || pids["api.service"] != pids0["api.service"] {
			t.Errorf("%s: something was restarted: %v", tc.name, jobs)
		}
		if g := v.ag.Generation(); g != 5 {
			t.Errorf("%s: agent generation %d, want 5", tc.name, g)
		}
	}
	// Through the real binary too: another VM's name and another key.
	for _, args := range [][]string{{"--vm", "other-vm"}} {
		r := run(t, built.host, nil, slices.Concat([]string{"push", "--connect", "unix:" + v.sock, "--sign-key", v.key, "--status-dir", v.hostStatus, "--timeout", "10s"}, args,
			writeSecretFiles(t, filepath.Join(v.work, "bad"), bad))...)
		if r.code != 1 {
			t.Errorf("push %v: exit %d, want 1", args, r.code)
		}
	}
	if !sameStore(before, snapshotStore(t, v.store)) {
		t.Error("a refused push changed the credstore")
	}
}

// corruptValue flips one byte of needle (one credential's value) in what
// the host writes: a value corrupted on its way, halfway through a set.
type corruptValue struct {
	net.Conn
	needle []byte
	hit    bool
}

func (c *corruptValue) Write(p []byte) (int, error) {
	if i := bytes.Index(p, c.needle); i >= 0 {
		p = slices.Clone(p)
		p[i+len(c.needle)/2] ^= 0x55
		c.hit = true
	}
	return c.Conn.Write(p)
}

// genValue is credential name's value for generation gen: each file says
// which generation it belongs to.
func genValue(gen int, name string) []byte {
	return []byte(fmt.Sprintf("gen=%06d name=%s %s", gen, name, strings.Repeat("x", 64)))
}

// TestRotation100RoundsNoMixedReads (issue 15, "simulated VM"): 100
// rotations of 20 credentials while readers loop over the store the way
// systemd's LoadCredential=ID:/run/credstore does (open the folder once,
// read every file relative to it): every pass sees one generation. Then a
// push whose value is corrupted halfway through the set fails
// verification and leaves the old set byte for byte.
func TestRotation100RoundsNoMixedReads(t *testing.T) {
	sd := newFakeSystemd(map[string][]string{"api.service": {"C00"}})
	v := startRotVM(t, sd)
	const n, rounds = 20, 100
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("C%02d", i)
	}
	set := func(gen int) []push.Credential {
		var cs []push.Credential
		for _, name := range names {
			cs = append(cs, push.Credential{Name: name, Value: credential.NewSecret(genValue(gen, name)), Delivery: manifest.DeliveryChannel})
		}
		return cs
	}
	pushGen := func(gen int, dial push.DialFunc) (push.Outcome, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return push.Push(ctx, push.Config{Address: address.Address{Kind: address.Unix, Path: v.sock}, Dial: dial,
			Request: push.Request{VM: "demo", Key: v.priv, IssuedAt: time.Now(), Credentials: set(gen)}})
	}
	if out, err := pushGen(1, nil); err != nil || out.Report.Outcome != proto.OutcomeReady {
		t.Fatalf("generation 1: %v %s", err, out.Report.Summary)
	}

	var stop atomic.Bool
	var passes, mixed, partial atomic.Int64
	var wg sync.WaitGroup
	reader := func() {
		defer wg.Done()
		for !stop.Load() {
			dfd, err := unix.Open(v.store, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				continue
			}
			gens := map[string]bool{}
			whole := true
			for _, name := range names {
				fd, err := unix.Openat(dfd, name, unix.O_RDONLY, 0)
				if err != nil {
					// The old folder being emptied after the exchange:
					// fewer files, never a newer one.
					whole = false
					continue
				}
				buf := make([]byte, 256)
				k, _ := unix.Read(fd, buf)
				unix.Close(fd)
				g, _, _ := strings.Cut(string(buf[:k]), " ")
				gens[g] = true
			}
			unix.Close(dfd)
			passes.Add(1)
			if len(gens) > 1 {
				mixed.Add(1)
			}
			if !whole {
				partial.Add(1)
			}
		}
	}
	wg.Add(1)
	go reader()
	for gen := 2; gen <= rounds+1; gen++ {
		out, err := pushGen(gen, nil)
		if err != nil || out.Report.Outcome != proto.OutcomeReady {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("round %d: %v %s", gen, err, out.Report.Summary)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d rotations: %d directory passes, %d mixed, %d saw the old folder being emptied", rounds, passes.Load(), mixed.Load(), partial.Load())
	if mixed.Load() != 0 {
		t.Errorf("%d of %d passes mixed generations", mixed.Load(), passes.Load())
	}
	if passes.Load() == 0 {
		t.Error("the readers made no pass")
	}
	if jobs, _ := sd.snapshot(); len(jobs) != rounds {
		t.Errorf("%d restarts of api.service (uses C00), want %d", len(jobs), rounds)
	}

	// Halfway: the 11th of 20 values is corrupted on its way.
	before := snapshotStore(t, v.store)
	jobs0, _ := sd.snapshot()
	cv := &corruptValue{needle: genValue(rounds+2, "C10")}
	dial := func(ctx context.Context, a address.Address) (net.Conn, error) {
		c, err := push.DialOnce(ctx, a)
		if err != nil {
			return nil, err
		}
		cv.Conn = c
		return cv, nil
	}
	out, err := pushGen(rounds+2, dial)
	if err != nil || !cv.hit {
		t.Fatalf("corrupted push: %v (corrupted: %v)", err, cv.hit)
	}
	if rep := out.Report; rep.Outcome != proto.OutcomeFailed || !strings.Contains(rep.Summary, "C10") {
		t.Fatalf("a push with C10 corrupted: %s %q, want a refusal naming C10", rep.Outcome, rep.Summary)
	}
	if !sameStore(before, snapshotStore(t, v.store)) {
		t.Error("a push that failed verification halfway changed the credstore")
	}
	if jobs, _ := sd.snapshot(); !slices.Equal(jobs, jobs0) {
		t.Error("a push that failed verification restarted something")
	}
	if g := v.ag.Generation(); g != rounds+1 {
		t.Errorf("agent generation %d, want %d", g, rounds+1)
	}
}

// TestAttackRotationUnprivileged: an unprivileged guest process can
// neither trigger a rotation (it cannot reach the agent: here its socket
// folder is root's 0700, standing for the privileged vsock port, which
// tier 2 tests for real) nor observe one's values: while 20 rotations run
// it reads everything it can under the store's parent (standing for /run,
// 0755) and the agent's status folder, and finds no value.
func TestAttackRotationUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "needs root to run a process as nobody: run the integration tests as root (CI does)")
	}
	sd := newFakeSystemd(map[string][]string{"api.service": {"API_KEY"}})
	v := startRotVM(t, sd)
	if err := os.Chmod(v.work, 0o755); err != nil {
		t.Fatal(err)
	}
	vals := func() map[string][]byte { return map[string][]byte{"API_KEY": randomText(), "DB": randomText()} }
	first := vals()
	if r := v.push(t, first); r.code != 0 {
		t.Fatalf("push: %s", r.stderr)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	// Trigger: the attacker's own key, the agent's address.
	adir := filepath.Join(v.work, "attacker")
	if err := os.Mkdir(adir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(adir, "vmcred-host")
	if b, err := os.ReadFile(built.host); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatal("copy vmcred-host")
	}
	if err := os.Chown(adir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	kg := startProc(t, "keygen (nobody)", nil, nobody, bin, "keygen", "--out", filepath.Join(adir, "k"))
	if code := kg.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("keygen as nobody: exit %d: %s", code, kg.stderr.Bytes())
	}
	before := snapshotStore(t, v.store)
	p := startProc(t, "push (nobody)", nil, nobody, bin, "push", "--vm", "demo", "--connect", "unix:"+v.sock, "--sign-key", filepath.Join(adir, "k.key"),
		"--status-dir", filepath.Join(adir, "st"), "--timeout", "2s", "--static", "API_KEY=attacker")
	if code := p.wait(t, 10*time.Second); code == 0 {
		t.Errorf("an unprivileged push succeeded")
	}
	if !sameStore(before, snapshotStore(t, v.store)) {
		t.Error("an unprivileged push changed the credstore")
	}
	if jobs, _ := sd.snapshot(); len(jobs) != 0 {
		t.Errorf("an unprivileged push restarted %v", jobs)
	}

	// Observe: read everything reachable while rotations run.
	script := `end=$(($(date +%s)+60)); while [ ! -e "$1/stop" ] && [ $(date +%s) -lt $end ]; do for f in "$2"/* "$2"/.* "$2"/*/* "$2"/.*/* "$3"/* "$3"/*/*; do cat "$f" 2>/dev/null; done; done`
	stopDir := filepath.Join(v.work, "stop-flag")
	os.Mkdir(stopDir, 0o755)
	spy := startProc(t, "spy (nobody)", nil, nobody, "/bin/sh", "-c", script, "sh", stopDir, v.parent, v.status)
	var sent [][]byte
	for range 20 {
		vs := vals()
		sent = append(sent, vs["API_KEY"], vs["DB"])
		if r := v.push(t, vs); r.code != 0 {
			t.Fatalf("rotation: %s", r.stderr)
		}
	}
	os.WriteFile(filepath.Join(stopDir, "stop"), nil, 0o644)
	spy.wait(t, 70*time.Second)
	seen := spy.stdout.Bytes()
	for _, s := range append(sent, first["API_KEY"], first["DB"]) {
		if bytes.Contains(seen, s) {
			t.Fatalf("an unprivileged process read a rotated value")
		}
	}
	t.Logf("the unprivileged reader got %d bytes, no value among them", len(seen))
}
