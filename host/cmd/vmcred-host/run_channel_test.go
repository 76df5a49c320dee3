package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/host/readiness"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// fakeAgent is run's "hypervisor" and its guest in one: it reads the OEM
// strings run passed (-smbios type=11,path=FILE), opens the manifest,
// sends systemd's READY=1 the way PID 1 does (write, half-close, wait for
// EOF), then plays the vmcred agent on the manifest's channel: HELLO,
// CREDENTIALS (checked against the manifest), REPORT with args[0]
// ("ready" or "failed"), ACK. After a failed report it waits for SIGTERM.
// It uses shared packages only: host code must not import the guest's.
func fakeAgent(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "fake-agent: "+format+"\n", a...)
		return 80
	}
	outcome := args[0]
	p := oemstring.NewParser(oemstring.PrefixText, oemstring.PrefixBinary, oemstring.PrefixVmcred)
	for _, a := range args[1:] {
		path, ok := strings.CutPrefix(a, "type=11,path=")
		if !ok {
			continue
		}
		b, err := os.ReadFile(strings.ReplaceAll(path, ",,", ","))
		if err != nil {
			return fail("%v", err)
		}
		p.AddString("smbios", string(b))
	}
	var m *manifest.Manifest
	firmware := map[string]oemstring.Entry{}
	for _, e := range p.Result().Entries {
		firmware[e.Name] = e
		if e.Name == "vmcred.manifest" {
			var err error
			if m, _, err = manifest.Open(e.Value.Reveal(), nil); err != nil {
				return fail("open manifest: %v", err)
			}
		}
	}
	if m == nil {
		return fail("no manifest")
	}
	a, err := address.Parse(m.Channel)
	if err != nil || a.Kind != address.Unix {
		return fail("channel %q: want a Unix socket in this test (%v)", m.Channel, err)
	}
	// PID 1's READY=1 first, as systemd ≥ 256 sends it.
	if c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: a.Path, Net: "unix"}); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("READY=1\nSTATUS=Ready."))
		c.CloseWrite()
		c.Read(make([]byte, 1))
		c.Close()
	}
	c, err := net.Dial("unix", a.Path)
	if err != nil {
		return fail("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	cl := proto.NewClient(c)
	if err := cl.WriteHello(proto.Hello{Token: m.Token, BootNonce: m.Nonce, BootID: "fake-boot", AgentVersion: "fake-agent"}); err != nil {
		return fail("hello: %v", err)
	}
	creds, err := cl.ReadCredentials()
	if err != nil {
		return fail("credentials: %v", err)
	}
	got := map[string]proto.Credential{}
	for _, c := range creds {
		got[c.Name] = c
	}
	r := proto.Report{Outcome: proto.OutcomeReady, Summary: "fake agent", AgentVersion: "fake-agent"}
	for _, e := range m.Entries {
		v := firmware[e.Name].Value
		if e.Delivery == manifest.DeliveryChannel {
			v = got[e.Name].Value
		}
		cr := proto.CredentialReport{Name: e.Name, Size: e.Size, Delivery: proto.Delivery(e.Delivery.String()), Verification: proto.VerifiedDigest}
		if err := e.Matches(v); err != nil {
			cr.Verification, cr.Error = proto.VerifyMismatch, err.Error()
			r.Outcome = proto.OutcomeFailed
		}
		r.Credentials = append(r.Credentials, cr)
	}
	if outcome == "failed" {
		r.Outcome = proto.OutcomeFailed
		r.Credentials[0].Verification, r.Credentials[0].Error = proto.VerifyMismatch, "fake mismatch"
	}
	if err := cl.WriteReport(r); err != nil {
		return fail("report: %v", err)
	}
	ack, err := cl.ReadAck()
	if err != nil {
		return fail("ack: %v", err)
	}
	fmt.Printf("fake-agent: %d channel credential(s), report %s, ack %q\n", len(creds), r.Outcome, ack)
	if r.Outcome == proto.OutcomeFailed {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		select {
		case <-ch:
			return 15
		case <-time.After(10 * time.Second):
			return 81
		}
	}
	return 0
}

// notifyCatcher is this process's "service manager": a unixgram socket in
// $NOTIFY_SOCKET that records what go-systemd's SdNotify sends.
type notifyCatcher struct {
	mu   sync.Mutex
	msgs []string
}

func catchNotify(t *testing.T) *notifyCatcher {
	t.Helper()
	path := filepath.Join(shortTemp(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	n := &notifyCatcher{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return n
}

func (n *notifyCatcher) all() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.msgs, "|")
}

// shortTemp is a folder with a short path, for Unix sockets.
func shortTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestRunServesChannel: run binds --listen first, packs with that address
// (the 2 MiB credential overflows to the channel), starts the hypervisor,
// serves the guest, and tells its own service manager READY=1 once the
// agent reports ready.
func TestRunServesChannel(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	notify := catchNotify(t)
	tmp := shortTemp(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 2<<20/16)
	sock, status := filepath.Join(tmp, "vm.sock"), filepath.Join(tmp, "status")
	h := newHarness(t)
	code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"),
		"--cred", "big=file:"+secretFile(t, tmp, "big", big), "--cred", "small=file:"+secretFile(t, tmp, "small", []byte("s3cret")),
		"--overflow", "channel", "--listen", "unix:"+sock, "--status-dir", status,
		"--", self, helperMarker, "fake-agent", "ready")
	if code != 0 {
		t.Fatalf("run: exit %d\nstdout %s\nlog %s", code, h.stdout.String(), h.log.String())
	}
	if !strings.Contains(h.stdout.String(), "fake-agent: 1 channel credential(s), report ready") {
		t.Errorf("agent output %q", h.stdout.String())
	}
	st, err := readiness.Read(status, "v")
	if err != nil || st.State != readiness.Ready || st.Boot == nil || !st.Boot.Ready {
		t.Fatalf("status %+v, %v", st, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(notify.all(), "READY=1\nSTATUS=guest v: 2 credentials verified") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := notify.all(); !strings.Contains(got, "READY=1\nSTATUS=guest v: 2 credentials verified") {
		t.Errorf("sd_notify messages %q", got)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after run: %v", err)
	}
	if strings.Contains(h.log.String(), "s3cret") {
		t.Error("the log holds a value")
	}
}

// TestRunExitOnFailure: a failed report stops the hypervisor and run
// exits 1 naming the failure; no READY=1 is sent.
func TestRunExitOnFailure(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	notify := catchNotify(t)
	tmp := shortTemp(t)
	h := newHarness(t)
	code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"),
		"--cred", "k=file:"+secretFile(t, tmp, "k", []byte("value")), "--listen", "unix:"+filepath.Join(tmp, "vm.sock"),
		"--status-dir", filepath.Join(tmp, "status"), "--exit-on-failure",
		"--", self, helperMarker, "fake-agent", "failed")
	if code != 1 || !strings.Contains(h.log.String(), "fake mismatch") || !strings.Contains(h.log.String(), "--exit-on-failure") {
		t.Errorf("run: exit %d, want 1 naming the failure; log %s", code, h.log.String())
	}
	if strings.Contains(notify.all(), "READY=1") {
		t.Errorf("READY=1 sent after a failed report: %q", notify.all())
	}
}

func TestRunListenUsage(t *testing.T) {
	h := newHarness(t)
	if code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--exit-on-failure", "--", "true"); code != 2 {
		t.Errorf("exit %d, want 2: %s", code, h.log.String())
	}
}

// TestRunSaysWhenTheGuestNeverReported: a hypervisor that exits 0 while
// the channel never heard from the guest makes run warn, once, saying
// which exit it uses; after a report, no warning.
func TestRunSaysWhenTheGuestNeverReported(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tmp := shortTemp(t)
	h := newHarness(t)
	code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"),
		"--cred", "k=file:"+secretFile(t, tmp, "k", []byte("value")), "--listen", "unix:"+filepath.Join(tmp, "vm.sock"),
		"--status-dir", filepath.Join(tmp, "status"), "--", self, helperMarker, "dump", "0")
	want := "the hypervisor exited 0 but the guest never reported"
	if code != 0 || strings.Count(h.log.String(), want) != 1 || !strings.Contains(h.log.String(), "run exits 0") {
		t.Errorf("exit %d, want 0 with one warning %q; log %s", code, want, h.log.String())
	}
}
