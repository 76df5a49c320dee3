package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

const testToken = "TOKEN-CANARY-0123456789abcdefghi"

var testNonce = [manifest.NonceSize]byte{7, 7, 7}

// chanPack is a host's pack with a channel: firmware strings (some
// credentials, and the manifest with the channel address and token) and
// the channel credentials the host will serve.
type chanPack struct {
	strs    []string
	channel map[string][]byte
	all     map[string][]byte
}

func packWithChannel(t *testing.T, key ed25519.PrivateKey, channelAddr string, firmwareVals, channelVals map[string][]byte) chanPack {
	t.Helper()
	b := manifest.NewBuilder("test-vm", testNonce, issued)
	if channelAddr != "" {
		b.SetChannel(channelAddr, credential.NewSecret([]byte(testToken)))
	}
	p := chanPack{channel: channelVals, all: map[string][]byte{}}
	for n, v := range firmwareVals {
		if err := b.Add(n, credential.NewSecret(v), manifest.DeliverySMBIOS, false); err != nil {
			t.Fatal(err)
		}
		p.strs = append(p.strs, format(t, oemstring.PrefixVmcred, n, v))
		p.all[n] = v
	}
	for n, v := range channelVals {
		if err := b.Add(n, credential.NewSecret(v), manifest.DeliveryChannel, false); err != nil {
			t.Fatal(err)
		}
		p.all[n] = v
	}
	env, err := b.Envelope(key)
	if err != nil {
		t.Fatal(err)
	}
	p.strs = append(p.strs, format(t, oemstring.PrefixBinary, ManifestName, env))
	return p
}

// fakeHost is the host's channel server, scripted: it checks the token
// and nonce, sends serve (possibly altered by the test), and records the
// REPORT.
type fakeHost struct {
	path  string
	serve []proto.Credential
	// bootstrap: accept the all-zero token and zero nonce the agent sends
	// in bootstrap mode (and only those), as serve does for a pack made
	// with --manifest-by-channel.
	bootstrap bool

	mu      sync.Mutex
	hellos  []proto.Hello
	reports []proto.Report
}

func startHost(t *testing.T, serve map[string][]byte) *fakeHost {
	t.Helper()
	h := &fakeHost{path: filepath.Join(t.TempDir(), "host.sock")}
	for n, v := range serve {
		h.serve = append(h.serve, proto.Credential{Name: n, Value: credential.NewSecret(v)})
	}
	slices.SortFunc(h.serve, func(a, b proto.Credential) int { return strings.Compare(a.Name, b.Name) })
	h.listen(t)
	return h
}

// listen starts serving h on the Unix socket h.path until the test ends.
func (h *fakeHost) listen(t *testing.T) {
	t.Helper()
	l, err := net.Listen("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				h.conversation(c)
			}()
		}
	}()
}

func (h *fakeHost) conversation(c net.Conn) {
	if proto.ReadMagic(c) != nil {
		return
	}
	s := proto.NewServer(c)
	hello, err := s.ReadHello()
	if err != nil {
		return
	}
	h.mu.Lock()
	h.hellos = append(h.hellos, hello)
	h.mu.Unlock()
	ok := string(hello.Token.Reveal()) == testToken && hello.BootNonce == testNonce
	if h.bootstrap {
		ok = bytes.Equal(hello.Token.Reveal(), make([]byte, proto.TokenSize)) && hello.BootNonce == [manifest.NonceSize]byte{}
	}
	if !ok {
		s.WriteError(proto.CodeBadToken, "no")
		return
	}
	if s.WriteCredentials(h.serve) != nil {
		return
	}
	r, err := s.ReadReport()
	if err != nil {
		return
	}
	h.mu.Lock()
	h.reports = append(h.reports, r)
	h.mu.Unlock()
	s.WriteAck("host recorded: " + r.Outcome.String())
}

func (h *fakeHost) lastReport(t *testing.T) proto.Report {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reports) != 1 {
		t.Fatalf("host got %d reports, want 1", len(h.reports))
	}
	return h.reports[0]
}

func channelConfig(t *testing.T, pub ed25519.PublicKey, strs []string) Config {
	t.Helper()
	work := t.TempDir()
	return Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, strs, 0)},
		Credstore: filepath.Join(shmDir(t), "credstore"), StatusDir: filepath.Join(work, "status"),
		TrustKeys: []ed25519.PublicKey{pub}, VM: "test-vm", Now: func() time.Time { return issued }, Timeout: 3 * time.Second, Version: "test"}
}

// TestChannelRoundTrip: a 4 MiB credential (over systemd's 1 MiB, so
// never in firmware) arrives by channel, is verified against the signed
// manifest with the firmware ones, and lands in the credstore; the host
// gets a ready REPORT and the agent records its ACK.
func TestChannelRoundTrip(t *testing.T) {
	pub, priv := newKey(t)
	big := randomSecret(t, 4<<20)
	host := startHost(t, map[string][]byte{"big": big, "tls.key": randomSecret(t, 3000)})
	p := packWithChannel(t, priv, "unix:"+host.path, map[string][]byte{"api-key": randomSecret(t, 32)}, host.values())
	cfg := channelConfig(t, pub, p.strs)
	rep, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	for name, want := range p.all {
		got, err := os.ReadFile(filepath.Join(cfg.Credstore, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes in the credstore, want %d (%v)", name, len(got), len(want), err)
		}
	}
	want := &ChannelStep{Address: "unix:" + host.path, Attempts: 1, Received: []string{"big", "tls.key"}, Reported: true, Acknowledged: true, Ack: "host recorded: ready"}
	if diff := cmp.Diff(want, rep.Fetch); diff != "" {
		t.Errorf("channel step (-want +got):\n%s", diff)
	}
	r := host.lastReport(t)
	if r.Outcome != proto.OutcomeReady || len(r.Credentials) != 3 {
		t.Fatalf("report: %v with %d credentials", r.Outcome, len(r.Credentials))
	}
	for _, c := range r.Credentials {
		if c.Verification != proto.VerifiedSignature || c.Error != "" || len(c.SHA256Prefix) != 16 {
			t.Errorf("report for %s: %+v", c.Name, c)
		}
		if c.Name == "big" && (c.Delivery != proto.DeliveryChannel || c.Size != 4<<20) {
			t.Errorf("report for big: %+v", c)
		}
	}
	back, err := ReadStatus(cfg.StatusDir)
	if err != nil || back.Fetch == nil || !back.Fetch.Acknowledged {
		t.Errorf("status file: %+v, %v", back.Fetch, err)
	}
	raw, _ := os.ReadFile(filepath.Join(cfg.StatusDir, StatusFile))
	if bytes.Contains(raw, []byte(testToken)) || bytes.Contains(raw, big[:64]) {
		t.Error("status file holds the token or a value")
	}
	host.mu.Lock()
	bootID := host.hellos[0].BootID
	host.mu.Unlock()
	if sys, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil && bootID != strings.TrimSpace(string(sys)) {
		t.Errorf("hello boot ID %q, want the kernel's", bootID)
	}
}

func (h *fakeHost) values() map[string][]byte {
	m := map[string][]byte{}
	for _, c := range h.serve {
		m[c.Name] = c.Value.Reveal()
	}
	return m
}

// TestChannelTampered: the host sends a value that does not match the
// signed manifest. The load fails, nothing is exposed, and the failure
// still reaches the host.
func TestChannelTampered(t *testing.T) {
	pub, priv := newKey(t)
	want := randomSecret(t, 100)
	host := startHost(t, map[string][]byte{"k": append([]byte{want[0] ^ 1}, want[1:]...)})
	p := packWithChannel(t, priv, "unix:"+host.path, map[string][]byte{"a": randomSecret(t, 8)}, map[string][]byte{"k": want})
	cfg := channelConfig(t, pub, p.strs)
	rep, err := Load(cfg)
	if cli.CodeOf(err) != cli.ExitFailure || !strings.Contains(err.Error(), `"k"`) {
		t.Fatalf("got %v, want a verification failure naming k", err)
	}
	if names := storeNames(t, cfg.Credstore); len(names) != 0 {
		t.Errorf("credstore holds %v after a failed load", names)
	}
	r := host.lastReport(t)
	if r.Outcome != proto.OutcomeFailed {
		t.Errorf("host got outcome %v", r.Outcome)
	}
	var k proto.CredentialReport
	for _, c := range r.Credentials {
		if c.Name == "k" {
			k = c
		}
	}
	if k.Verification != "mismatch" || !strings.Contains(k.Error, "sha256 differs") {
		t.Errorf("report for k: %+v", k)
	}
	if !rep.Fetch.Acknowledged {
		t.Error("ack not recorded")
	}
}

// TestChannelFailsFirmware: a firmware credential fails verification; the
// agent still fetches (to authenticate) and reports the failure.
func TestChannelFailsFirmware(t *testing.T) {
	pub, priv := newKey(t)
	host := startHost(t, map[string][]byte{"c": randomSecret(t, 10)})
	p := packWithChannel(t, priv, "unix:"+host.path, map[string][]byte{"a": randomSecret(t, 8)}, host.values())
	p.strs[0] = format(t, oemstring.PrefixVmcred, "a", []byte("tampered"))
	_, err := Load(channelConfig(t, pub, p.strs))
	if cli.CodeOf(err) != cli.ExitFailure {
		t.Fatalf("got %v, want a verification failure", err)
	}
	if r := host.lastReport(t); r.Outcome != proto.OutcomeFailed {
		t.Errorf("host got %v", r.Outcome)
	}
}

// TestChannelUnreachable: the host never answers; the channel credentials
// fail as fetch-failed within the timeout, and the load exits 4.
func TestChannelUnreachable(t *testing.T) {
	pub, priv := newKey(t)
	path := filepath.Join(t.TempDir(), "nobody.sock")
	p := packWithChannel(t, priv, "unix:"+path, map[string][]byte{"a": randomSecret(t, 8)}, map[string][]byte{"c": randomSecret(t, 10)})
	cfg := channelConfig(t, pub, p.strs)
	cfg.Timeout = 300 * time.Millisecond
	start := time.Now()
	rep, err := Load(cfg)
	// DESIGN §7: a timeout is exit 4 when nothing else went wrong.
	if cli.CodeOf(err) != cli.ExitTimeout {
		t.Fatalf("got %v (exit %d), want a timeout failure (exit 4)", err, cli.CodeOf(err))
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v with a 300ms timeout", took)
	}
	var c CredentialResult
	for _, x := range rep.Credentials {
		if x.Name == "c" {
			c = x
		}
	}
	if c.Verification != "fetch-failed" || !strings.Contains(c.Problem, "deadline") {
		t.Errorf("result for c: %+v", c)
	}
	if rep.Fetch == nil || rep.Fetch.Reported || rep.Fetch.Error == "" {
		t.Errorf("channel step %+v", rep.Fetch)
	}
}

// TestNoChannelNoDial: a manifest without a channel is never dialed, even
// with --channel given.
func TestNoChannelNoDial(t *testing.T) {
	pub, priv := newKey(t)
	p := packWithChannel(t, priv, "", map[string][]byte{"a": randomSecret(t, 8)}, nil)
	cfg := channelConfig(t, pub, p.strs)
	cfg.Channel = "unix:/nonexistent/should-not-be-dialed"
	dialed := false
	cfg.Dial = func(context.Context, address.Address) (net.Conn, error) {
		dialed = true
		return nil, errors.New("dialed")
	}
	rep, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if dialed || rep.Fetch != nil {
		t.Errorf("dialed %v, channel step %+v; want no dial", dialed, rep.Fetch)
	}
}

// TestChannelOverride: --channel replaces the manifest's address (the
// guest cannot reach the vsock address in a simulated VM).
func TestChannelOverride(t *testing.T) {
	pub, priv := newKey(t)
	host := startHost(t, map[string][]byte{"c": randomSecret(t, 10)})
	p := packWithChannel(t, priv, "vsock-stream:2:4000", nil, host.values())
	cfg := channelConfig(t, pub, p.strs)
	cfg.Channel = "unix:" + host.path
	var dialed []string
	cfg.Dial = func(ctx context.Context, a address.Address) (net.Conn, error) {
		dialed = append(dialed, a.String())
		if a.Kind != address.Unix {
			return nil, errors.New("test: refusing to dial a non-Unix address")
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.Path)
	}
	if _, err := Load(cfg); err != nil {
		t.Fatal(err)
	}
	for _, d := range dialed {
		if d != cfg.Channel {
			t.Errorf("dialed %s", d)
		}
	}
}

// TestChannelTimeoutWithOtherProblem: a timed-out fetch together with a
// firmware credential that does not match is a verification failure (1),
// not a timeout: the certain failure wins.
func TestChannelTimeoutWithOtherProblem(t *testing.T) {
	pub, priv := newKey(t)
	path := filepath.Join(t.TempDir(), "nobody.sock")
	p := packWithChannel(t, priv, "unix:"+path, map[string][]byte{"a": randomSecret(t, 8)}, map[string][]byte{"c": randomSecret(t, 10)})
	for i, s := range p.strs {
		if strings.Contains(s, ":a=") {
			p.strs[i] = format(t, oemstring.PrefixVmcred, "a", randomSecret(t, 8))
		}
	}
	cfg := channelConfig(t, pub, p.strs)
	cfg.Timeout = 300 * time.Millisecond
	_, err := Load(cfg)
	if cli.CodeOf(err) != cli.ExitFailure || !strings.Contains(err.Error(), `credential "a"`) {
		t.Fatalf("got %v (exit %d), want exit 1 naming credential a", err, cli.CodeOf(err))
	}
}
