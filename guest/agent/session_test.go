package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// testHost plays the host's side of a session with shared/channel and
// shared/manifest only (the guest may not import host/...): it dials,
// reads the CHALLENGE, signs a manifest over it and sends the values.
type testHost struct {
	key  ed25519.PrivateKey
	vm   string
	vals map[string][]byte
	// firmware lists names the manifest says go by SMBIOS (sent as
	// entries only, no value).
	firmware map[string]bool
	policy   map[string]manifest.Policy
	// edit, when set, changes the manifest before it is signed.
	edit func(m *manifest.Manifest, ch proto.Challenge)
	// send, when set, replaces the values sent.
	send []proto.Credential
	// envelope, when set, is sent instead of a fresh manifest (a replay).
	envelope []byte
}

type sessionResult struct {
	challenge proto.Challenge
	envelope  []byte
	report    proto.Report
	err       error
}

func (h *testHost) manifest(t *testing.T, ch proto.Challenge) []byte {
	t.Helper()
	b := manifest.NewBuilder(h.vm, issued)
	b.SetSession(ch.Nonce, ch.Generation+1)
	for _, n := range sortedKeys(h.vals) {
		d := manifest.DeliveryChannel
		if h.firmware[n] {
			d = manifest.DeliverySMBIOS
		}
		e := manifest.NewEntry(n, credential.NewSecret(h.vals[n]), d, false)
		e.Policy = h.policy[n]
		if err := b.AddEntry(e); err != nil {
			t.Fatal(err)
		}
	}
	m, err := b.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if h.edit != nil {
		h.edit(m, ch)
	}
	body, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	env, err := manifest.Sign(body, h.key)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func sortedKeys(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// run dials path and runs one session.
func (h *testHost) run(t *testing.T, path string) sessionResult {
	t.Helper()
	var r sessionResult
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if r.err = proto.ReadMagic(c); r.err != nil {
		return r
	}
	conn := proto.NewHost(c)
	if r.challenge, r.err = conn.ReadChallenge(); r.err != nil {
		return r
	}
	r.envelope = h.envelope
	if r.envelope == nil {
		r.envelope = h.manifest(t, r.challenge)
	}
	if r.err = conn.WriteManifest(r.envelope); r.err != nil {
		return r
	}
	send := h.send
	if send == nil {
		for _, n := range sortedKeys(h.vals) {
			if !h.firmware[n] {
				send = append(send, proto.Credential{Name: n, Value: credential.NewSecret(h.vals[n])})
			}
		}
	}
	// A refused session gets its REPORT before the values are read: the
	// write may then fail, and the REPORT is still there to read.
	_ = conn.WriteCredentials(send)
	if r.report, r.err = conn.ReadReport(); r.err != nil {
		return r
	}
	// After a refused manifest the agent closes without reading the
	// values: no ACK is expected then.
	if err := conn.WriteAck("recorded"); err != nil && r.report.Outcome == proto.OutcomeReady {
		r.err = err
	}
	return r
}

// agentEnv is an agent listening on a Unix socket in a private folder.
type agentEnv struct {
	agent *Agent
	sock  string
	store string
	cfg   Config
	pub   ed25519.PublicKey
	priv  ed25519.PrivateKey
	mu    sync.Mutex
	reps  []Report
}

func startAgent(t *testing.T, strs []string, opts Options) *agentEnv {
	t.Helper()
	pub, priv := newKey(t)
	return startAgentKey(t, pub, priv, strs, opts)
}

func startAgentKey(t *testing.T, pub ed25519.PublicKey, priv ed25519.PrivateKey, strs []string, opts Options) *agentEnv {
	t.Helper()
	work := t.TempDir()
	e := &agentEnv{pub: pub, priv: priv, store: filepath.Join(shmDir(t), "credstore"), sock: filepath.Join(work, "agent.sock")}
	fw := firmware.Options{DMITable: strings.TrimPrefix(filepath.Join(work, "missing-DMI"), "/")}
	if strs != nil {
		fw.DMITable = writeTable(t, work, strs, 0)
	}
	e.cfg = Config{Root: os.DirFS("/"), Firmware: fw, Credstore: e.store, StatusDir: filepath.Join(work, "status"),
		TrustKeys: []ed25519.PublicKey{pub}, VM: "test-vm", Now: func() time.Time { return issued }, Version: "test"}
	prev := opts.OnReport
	opts.OnReport = func(r Report, err error) {
		e.mu.Lock()
		e.reps = append(e.reps, r)
		e.mu.Unlock()
		if prev != nil {
			prev(r, err)
		}
	}
	a, err := New(e.cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	e.agent = a
	a.Boot()
	l, err := Listen(address.Address{Kind: address.Unix, Path: e.sock})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func (e *agentEnv) host(vals map[string][]byte) *testHost {
	return &testHost{key: e.priv, vm: "test-vm", vals: vals}
}

func readStore(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, n := range storeNames(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = b
	}
	return out
}

// TestSessionNoFirmware: Firecracker (no firmware at all). The agent boots
// waiting, the host's session brings everything, the agent writes it all,
// keeps the signed manifest (0600, no value), and reports ready with the
// manifest's generation.
func TestSessionNoFirmware(t *testing.T) {
	e := startAgent(t, nil, Options{})
	if got := e.reps[0].Outcome; got != OutcomeWaiting {
		t.Fatalf("boot outcome %q, want waiting", got)
	}
	vals := map[string][]byte{"api-key": randomSecret(t, 32), "big": randomSecret(t, 3<<20), "empty": {}}
	r := e.host(vals).run(t, e.sock)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.report.Outcome != proto.OutcomeReady || r.report.Generation != 1 {
		t.Fatalf("report %s generation %d: %s", r.report.Outcome, r.report.Generation, r.report.Summary)
	}
	if r.challenge.Generation != 0 || r.challenge.Nonce == [proto.ChallengeSize]byte{} {
		t.Errorf("challenge generation %d", r.challenge.Generation)
	}
	got := readStore(t, e.store)
	if diff := cmp.Diff(sortedKeys(vals), sortedKeys(got)); diff != "" {
		t.Fatalf("credstore (-want +got):\n%s", diff)
	}
	for n, v := range vals {
		if !bytes.Equal(got[n], v) {
			t.Errorf("%s differs", n)
		}
	}
	saved := filepath.Join(e.cfg.StatusDir, ManifestFile)
	st, err := os.Stat(saved)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("saved manifest: %v %v", st, err)
	}
	if b, _ := os.ReadFile(saved); !bytes.Equal(b, r.envelope) {
		t.Errorf("saved manifest is not the signed bytes")
	}
	if e.agent.Generation() != 1 {
		t.Errorf("agent generation %d", e.agent.Generation())
	}
	// The agent rewrites the status once the ACK is in; wait for it.
	var back Report
	for range 500 {
		if back, err = ReadStatus(e.cfg.StatusDir); err == nil && back.Fetch != nil && back.Fetch.Acknowledged {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || back.Outcome != OutcomeReady || back.ManifestSource != ManifestFromSession || back.Fetch == nil || !back.Fetch.Acknowledged {
		t.Errorf("status: %+v %v", back, err)
	}
	// A second session is generation 2, and replaces the set.
	vals2 := map[string][]byte{"api-key": randomSecret(t, 32)}
	r = e.host(vals2).run(t, e.sock)
	if r.err != nil || r.report.Outcome != proto.OutcomeReady || r.challenge.Generation != 1 || r.report.Generation != 2 {
		t.Fatalf("second session: %v %s gen %d→%d", r.err, r.report.Outcome, r.challenge.Generation, r.report.Generation)
	}
	if diff := cmp.Diff([]string{"api-key"}, storeNames(t, e.store)); diff != "" {
		t.Errorf("credstore after the second session (-want +got):\n%s", diff)
	}
}

// TestSessionMixed: QEMU. Firmware carries two credentials and a manifest
// that lists a third for the channel: the boot load waits; the session's
// manifest lists all three, sends only the third, and the agent exposes
// all three.
func TestSessionMixed(t *testing.T) {
	pub, priv := newKey(t)
	vals := map[string][]byte{"api-key": randomSecret(t, 32), "db-password": randomSecret(t, 24), "tls.key": randomSecret(t, 5000)}
	b := manifest.NewBuilder("test-vm", issued)
	var strs []string
	for _, n := range sortedKeys(vals) {
		d := manifest.DeliverySMBIOS
		if n == "tls.key" {
			d = manifest.DeliveryChannel
		} else {
			strs = append(strs, format(t, oemstring.PrefixVmcred, n, vals[n]))
		}
		if err := b.Add(n, credential.NewSecret(vals[n]), d, false); err != nil {
			t.Fatal(err)
		}
	}
	env, err := b.Envelope(priv)
	if err != nil {
		t.Fatal(err)
	}
	strs = append(strs, format(t, oemstring.PrefixVmcred, ManifestName, env))
	e := startAgentKey(t, pub, priv, strs, Options{})
	if got := e.reps[0].Outcome; got != OutcomeWaiting {
		t.Fatalf("boot outcome %q (%v), want waiting", got, e.reps[0].Problems)
	}
	if n := storeNames(t, e.store); len(n) != 0 {
		t.Fatalf("boot wrote %v before the session", n)
	}
	h := e.host(vals)
	h.firmware = map[string]bool{"api-key": true, "db-password": true}
	r := h.run(t, e.sock)
	if r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatalf("session: %v %s: %s", r.err, r.report.Outcome, r.report.Summary)
	}
	got := readStore(t, e.store)
	for n, v := range vals {
		if !bytes.Equal(got[n], v) {
			t.Errorf("%s differs or is missing", n)
		}
	}
}

// TestFirmwareOnlyBootIsReady: a QEMU guest whose firmware carries
// everything is ready at boot, before any session.
func TestFirmwareOnlyBootIsReady(t *testing.T) {
	pub, priv := newKey(t)
	p := pack(t, packOpts{key: priv}, seedValues(t))
	e := startAgentKey(t, pub, priv, p.strs, Options{})
	if got := e.reps[0].Outcome; got != OutcomeReady {
		t.Fatalf("boot outcome %q: %v", got, e.reps[0].Problems)
	}
	if len(storeNames(t, e.store)) != len(p.values) {
		t.Errorf("credstore %v", storeNames(t, e.store))
	}
}

// TestSessionRefusals: a session signed by another key, for another VM,
// replayed from an earlier connection, for an older generation, unsigned,
// or with values that do not match is refused with a failed REPORT naming
// why, and nothing is written: the credstore stays as the first session
// left it.
func TestSessionRefusals(t *testing.T) {
	e := startAgent(t, nil, Options{})
	good := map[string][]byte{"api-key": []byte("first-value-0123456789")}
	first := e.host(good).run(t, e.sock)
	if first.err != nil || first.report.Outcome != proto.OutcomeReady {
		t.Fatalf("first session: %v %s", first.err, first.report.Summary)
	}
	_, otherKey := newKey(t)
	newVals := map[string][]byte{"api-key": []byte("second-value-987654321"), "other": []byte("x")}
	tests := []struct {
		name string
		host func() *testHost
		want string
	}{
		{"another key", func() *testHost { h := e.host(newVals); h.key = otherKey; return h }, "signed by an untrusted key"},
		{"another vm", func() *testHost { h := e.host(newVals); h.vm = "other-vm"; return h }, `issued for vm "other-vm"`},
		{"replayed", func() *testHost { h := e.host(good); h.envelope = first.envelope; return h }, "not signed for this session"},
		{"older generation", func() *testHost {
			h := e.host(newVals)
			h.edit = func(m *manifest.Manifest, _ proto.Challenge) { m.Generation = 0 }
			return h
		}, "generation 0 is older than the 1"},
		{"no challenge", func() *testHost {
			h := e.host(newVals)
			h.edit = func(m *manifest.Manifest, _ proto.Challenge) { m.Challenge = [manifest.ChallengeSize]byte{} }
			return h
		}, "not signed for this session"},
		{"value does not match", func() *testHost {
			h := e.host(newVals)
			h.send = []proto.Credential{{Name: "api-key", Value: credential.NewSecret([]byte("tampered-value-xxxxxxx"))}, {Name: "other", Value: credential.NewSecret([]byte("x"))}}
			return h
		}, `credential "api-key"`},
		{"value not in the manifest", func() *testHost {
			h := e.host(newVals)
			h.send = []proto.Credential{{Name: "api-key", Value: credential.NewSecret(newVals["api-key"])}, {Name: "other", Value: credential.NewSecret([]byte("x"))}, {Name: "extra", Value: credential.NewSecret([]byte("y"))}}
			return h
		}, `"extra" arrived in the session but is not in the manifest`},
		{"value missing", func() *testHost {
			h := e.host(newVals)
			h.send = []proto.Credential{{Name: "api-key", Value: credential.NewSecret(newVals["api-key"])}}
			return h
		}, `"other" is listed in the manifest`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.host().run(t, e.sock)
			if r.err != nil {
				t.Fatalf("session: %v", r.err)
			}
			if r.report.Outcome != proto.OutcomeFailed || !strings.Contains(r.report.Summary, tt.want) {
				t.Errorf("report %s %q, want failed naming %q", r.report.Outcome, r.report.Summary, tt.want)
			}
			if r.report.Generation != 1 {
				t.Errorf("report generation %d, want the 1 the agent still holds", r.report.Generation)
			}
			got := readStore(t, e.store)
			if diff := cmp.Diff([]string{"api-key"}, sortedKeys(got)); diff != "" || !bytes.Equal(got["api-key"], good["api-key"]) {
				t.Errorf("credstore changed (-want +got):\n%s", diff)
			}
			if e.agent.Generation() != 1 {
				t.Errorf("generation moved to %d", e.agent.Generation())
			}
		})
	}
}

// TestIdleConnectionsDoNotBlock: 1000 connections that read their
// challenge and then say nothing do not keep the host's session out: the
// oldest pending ones are closed to make room.
func TestIdleConnectionsDoNotBlock(t *testing.T) {
	e := startAgent(t, nil, Options{MaxPending: 8})
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 1000 {
		c, err := net.Dial("unix", e.sock)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// Each has its challenge (or was shed already): the agent has taken
	// them all in before the host dials.
	for _, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := proto.ReadMagic(c); err == nil {
			_, _ = proto.NewHost(c).ReadChallenge()
		}
	}
	r := e.host(map[string][]byte{"a": []byte("v")}).run(t, e.sock)
	if r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatalf("session behind 1000 idle connections: %v %s", r.err, r.report.Summary)
	}
	e.agent.mu.Lock()
	n := len(e.agent.pending)
	e.agent.mu.Unlock()
	if n > 8 {
		t.Errorf("%d pending connections, over the bound of 8", n)
	}
}

type recRotator struct {
	mu    sync.Mutex
	calls [][]Change
}

func (r *recRotator) Rotated(_ context.Context, ch []Change) ([]UnitOutcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, ch)
	return nil, nil
}

// TestRotatorSeam: after each session that replaced a set the agent had
// exposed, the Rotator hears exactly the names whose value changed,
// appeared or went away, each with the policy the signed manifest gives
// it; the first set is no rotation.
func TestRotatorSeam(t *testing.T) {
	rot := &recRotator{}
	e := startAgent(t, nil, Options{Rotator: rot})
	h := e.host(map[string][]byte{"a": []byte("1"), "b": []byte("2"), "c": []byte("3")})
	h.policy = map[string]manifest.Policy{"b": manifest.PolicyReload}
	if r := h.run(t, e.sock); r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatal(r.err, r.report.Summary)
	}
	// b keeps its length: the change is in the value only.
	h = e.host(map[string][]byte{"a": []byte("1"), "b": []byte("9"), "d": []byte("4")})
	h.policy = map[string]manifest.Policy{"b": manifest.PolicyReload, "d": manifest.PolicyNone}
	if r := h.run(t, e.sock); r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatal(r.err, r.report.Summary)
	}
	want := [][]Change{
		{{Name: "b", Policy: manifest.PolicyReload}, {Name: "c", Removed: true}, {Name: "d", Policy: manifest.PolicyNone}},
	}
	if diff := cmp.Diff(want, rot.calls); diff != "" {
		t.Errorf("Rotated calls (-want +got):\n%s", diff)
	}
}

// TestNewNeedsVMAndKey: an agent without a VM name or a trust key could
// not check a session; New refuses to start it.
func TestNewNeedsVMAndKey(t *testing.T) {
	pub, _ := newKey(t)
	if _, err := New(Config{TrustKeys: []ed25519.PublicKey{pub}}, Options{}); err == nil || !strings.Contains(err.Error(), "--vm") {
		t.Errorf("New without a VM = %v", err)
	}
	if _, err := New(Config{VM: "v"}, Options{}); err == nil || !strings.Contains(err.Error(), "--trust-key") {
		t.Errorf("New without a key = %v", err)
	}
}

// TestCheckListen: the agent refuses a vsock port an unprivileged process
// could bind, saying why, and an abstract Unix socket, which has no
// permissions; a private folder is required for a Unix socket.
func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want string
	}{
		{"vsock::1024", "not privileged"},
		{"vsock::5000", "not privileged"},
		{"vsock::0", "not privileged"},
		{"unix:@vmcred-agent", "abstract"},
	} {
		a, err := address.Parse(tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckListen(a); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckListen(%s) = %v, want %q", tc.addr, err, tc.want)
		}
	}
	for _, ok := range []string{"vsock::730", "vsock::1023", "vsock:1:1", "unix:/run/x.sock"} {
		a, _ := address.Parse(ok)
		if err := CheckListen(a); err != nil {
			t.Errorf("CheckListen(%s) = %v", ok, err)
		}
	}
	open := t.TempDir()
	if err := os.Chmod(open, 0o1777); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(address.Address{Kind: address.Unix, Path: filepath.Join(open, "a.sock")}); err == nil || !strings.Contains(err.Error(), "others could replace") {
		t.Errorf("Listen in a 1777 folder = %v, want a refusal", err)
	}
}

// TestBusyPeerWaits: authenticated sessions at once never interleave;
// each completes, one after the other. Sessions that drew the same
// generation (they read the same challenge generation) are not a higher
// one for the agent once the first of them is in: they are refused whole,
// never half-applied.
func TestBusyPeerWaits(t *testing.T) {
	e := startAgent(t, nil, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	var ready atomic.Int32
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.host(map[string][]byte{"a": bytes.Repeat([]byte{byte('a' + i)}, 1<<20)}).run(t, e.sock)
			switch {
			case r.err != nil:
				errs <- r.err
			case r.report.Outcome == proto.OutcomeReady:
				ready.Add(1)
			case !strings.Contains(r.report.Summary, "a rotation must bring a higher one"):
				errs <- errors.New(r.report.Summary)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ready.Load() == 0 {
		t.Error("no session was ready")
	}
	if got := readStore(t, e.store); len(got["a"]) != 1<<20 {
		t.Errorf("credstore a is %d bytes", len(got["a"]))
	}
}

// TestRotationAfterAgentRestart: the agent restarted after it exposed a
// set (Restart=on-failure): its memory is empty, but the store's state
// file says vmcred wrote this boot's set, so the next session is still a
// rotation (one exchange, unchanged files keep their inode) and the
// Rotator hears what changed, from the store's own account.
func TestRotationAfterAgentRestart(t *testing.T) {
	e := startAgent(t, nil, Options{})
	if r := e.host(map[string][]byte{"a": []byte("1"), "b": []byte("2")}).run(t, e.sock); r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatal(r.err, r.report.Summary)
	}
	fi, err := os.Stat(filepath.Join(e.store, "b"))
	if err != nil {
		t.Fatal(err)
	}
	rot := &recRotator{}
	again, err := New(e.cfg, Options{Rotator: rot})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "again.sock")
	l, err := Listen(address.Address{Kind: address.Unix, Path: sock})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); again.Serve(ctx, l) }()
	defer func() { cancel(); <-done }()
	if r := e.host(map[string][]byte{"a": []byte("9"), "b": []byte("2")}).run(t, sock); r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatal(r.err, r.report.Summary)
	}
	if diff := cmp.Diff([][]Change{{{Name: "a", Policy: manifest.PolicyRestart}}}, rot.calls); diff != "" {
		t.Errorf("Rotated calls after a restart (-want +got):\n%s", diff)
	}
	fi2, err := os.Stat(filepath.Join(e.store, "b"))
	if err != nil || !os.SameFile(fi, fi2) {
		t.Errorf("the unchanged b got a new file (%v)", err)
	}
}

// TestRestartKeepsRotatedSet: firmware brought generation 0 at boot, a
// session rotated api-key, then the agent restarted: its boot does not
// load the firmware's (older) set over the rotated one; it keeps the
// session's generation and is ready.
func TestRestartKeepsRotatedSet(t *testing.T) {
	pub, priv := newKey(t)
	p := pack(t, packOpts{key: priv}, seedValues(t))
	e := startAgentKey(t, pub, priv, p.strs, Options{})
	if got := e.reps[0].Outcome; got != OutcomeReady {
		t.Fatalf("boot outcome %q: %v", got, e.reps[0].Problems)
	}
	vals := map[string][]byte{}
	for n, v := range p.values {
		vals[n] = v
	}
	newKeyValue := randomSecret(t, 32)
	for n := range vals {
		vals[n] = newKeyValue
		break
	}
	r := e.host(vals).run(t, e.sock)
	if r.err != nil || r.report.Outcome != proto.OutcomeReady {
		t.Fatalf("rotation: %v %s", r.err, r.report.Summary)
	}
	before := readStore(t, e.store)
	again, err := New(e.cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := again.Boot()
	if err != nil || rep.Outcome != OutcomeReady || !strings.Contains(rep.Summary, "kept generation") {
		t.Fatalf("boot after a restart: %v %q", err, rep.Summary)
	}
	if again.Generation() != r.report.Generation {
		t.Errorf("generation %d after the restart, want %d", again.Generation(), r.report.Generation)
	}
	if diff := cmp.Diff(before, readStore(t, e.store)); diff != "" {
		t.Errorf("the restart's boot changed the credstore (-before +after):\n%s", diff)
	}
}
