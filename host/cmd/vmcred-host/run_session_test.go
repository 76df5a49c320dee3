package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
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
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// fakeAgent is run's "hypervisor" and its guest agent in one: it reads the
// OEM strings run passed (-smbios type=11,path=FILE), listens on the Unix
// socket args[1] as the agent does, and plays one session: CHALLENGE, the
// MANIFEST (its signature checked with the public key in file args[2], its
// challenge with the one sent), CREDENTIALS (each value checked against
// the manifest, firmware ones against the OEM strings), REPORT with
// args[0] ("ready" or "failed"), ACK. After a failed report it waits for
// SIGTERM. It uses shared packages only: host code must not import the
// guest's.
func fakeAgent(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "fake-agent: "+format+"\n", a...)
		return 80
	}
	outcome, sock := args[0], args[1]
	pubText, err := os.ReadFile(args[2])
	if err != nil {
		return fail("%v", err)
	}
	pub, err := manifest.ParsePublicKey(pubText)
	if err != nil {
		return fail("%v", err)
	}
	p := oemstring.NewParser(oemstring.PrefixText, oemstring.PrefixBinary, oemstring.PrefixVmcred)
	for _, a := range args[3:] {
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
	firmware := map[string]oemstring.Entry{}
	for _, e := range p.Result().Entries {
		firmware[e.Name] = e
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fail("listen: %v", err)
	}
	defer l.Close()
	c, err := l.Accept()
	if err != nil {
		return fail("accept: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	conn := proto.NewAgent(c)
	var nonce [proto.ChallengeSize]byte
	rand.Read(nonce[:])
	if err := conn.WriteChallenge(proto.Challenge{Nonce: nonce, BootID: "fake-boot", AgentVersion: "fake-agent"}); err != nil {
		return fail("challenge: %v", err)
	}
	env, err := conn.ReadManifest()
	if err != nil {
		return fail("manifest: %v", err)
	}
	m, _, err := manifest.Open(env, []ed25519.PublicKey{pub})
	if err != nil || m.Challenge != nonce || m.VM != "v" || m.Generation != 1 {
		return fail("manifest not for this session: %v", err)
	}
	creds, err := conn.ReadCredentials()
	if err != nil {
		return fail("credentials: %v", err)
	}
	got := map[string]proto.Credential{}
	for _, c := range creds {
		got[c.Name] = c
	}
	r := proto.Report{Outcome: proto.OutcomeReady, Summary: "fake agent", AgentVersion: "fake-agent", Generation: m.Generation}
	for _, e := range m.Entries {
		v := firmware[e.Name].Value
		if e.Delivery == manifest.DeliveryChannel {
			v = got[e.Name].Value
		}
		cr := proto.CredentialReport{Name: e.Name, Size: e.Size, Delivery: proto.Delivery(e.Delivery.String()), Verification: proto.VerifiedSignature}
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
	if err := conn.WriteReport(r); err != nil {
		return fail("report: %v", err)
	}
	ack, err := conn.ReadAck()
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

// TestRunDialsAgent: run packs (the 2 MiB credential overflows to the
// session), starts the hypervisor, dials the agent at --connect while it
// comes up, runs the session, and records the report for wait; the
// service manager hears STATUS= with the outcome.
func TestRunDialsAgent(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	notify := catchNotify(t)
	tmp := shortTemp(t)
	keyFile, pub := goldenKey(t, tmp)
	pubFile := filepath.Join(tmp, "k.pub")
	if err := os.WriteFile(pubFile, must(manifest.MarshalPublicKey(pub)), 0o644); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 2<<20/16)
	sock, status := filepath.Join(tmp, "agent.sock"), filepath.Join(tmp, "status")
	h := newHarness(t)
	code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"), "--sign-key", keyFile,
		"--cred", "big=file:"+secretFile(t, tmp, "big", big), "--cred", "small=file:"+secretFile(t, tmp, "small", []byte("s3cret")),
		"--overflow", "channel", "--connect", "unix:"+sock, "--status-dir", status, "--timeout", "20s",
		"--", self, helperMarker, "fake-agent", "ready", sock, pubFile)
	if code != 0 {
		t.Fatalf("run: exit %d\nstdout %s\nlog %s", code, h.stdout.String(), h.log.String())
	}
	if !strings.Contains(h.stdout.String(), "fake-agent: 1 channel credential(s), report ready") {
		t.Errorf("agent output %q", h.stdout.String())
	}
	st, err := readiness.Read(status, "v")
	if err != nil || st.State != readiness.Ready || st.Generation != 1 || st.Session == nil || len(st.Session.Credentials) != 1 {
		t.Fatalf("status %+v, %v", st, err)
	}
	if got := notify.all(); !strings.Contains(got, "STATUS=guest v: 2 credentials verified") {
		t.Errorf("sd_notify messages %q", got)
	}
	if strings.Contains(h.log.String(), "s3cret") {
		t.Error("the log holds a value")
	}
}

// TestRunExitOnFailure: a failed report stops the hypervisor and run
// exits 1 naming the failure.
func TestRunExitOnFailure(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tmp := shortTemp(t)
	keyFile, pub := goldenKey(t, tmp)
	pubFile := filepath.Join(tmp, "k.pub")
	if err := os.WriteFile(pubFile, must(manifest.MarshalPublicKey(pub)), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(tmp, "agent.sock")
	h := newHarness(t)
	code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"), "--sign-key", keyFile,
		"--cred", "k=file:"+secretFile(t, tmp, "k", []byte("value")), "--connect", "unix:"+sock,
		"--status-dir", filepath.Join(tmp, "status"), "--exit-on-failure", "--timeout", "20s",
		"--", self, helperMarker, "fake-agent", "failed", sock, pubFile)
	if code != 1 || !strings.Contains(h.log.String(), "fake mismatch") || !strings.Contains(h.log.String(), "--exit-on-failure") {
		t.Errorf("run: exit %d, want 1 naming the failure; log %s", code, h.log.String())
	}
}

func TestRunSessionUsage(t *testing.T) {
	for _, args := range [][]string{
		{"run", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--exit-on-failure", "--", "true"},
		{"run", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--connect", "unix:/x", "--", "true"},
		{"run", "--vm", "v", "--hypervisor", "qemu", "--static", "a=b", "--connect", "vsock:3:5000", "--sign-key", "/k", "--", "true"},
	} {
		h := newHarness(t)
		if code := h.run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, h.log.String())
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
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
	keyFile, _ := goldenKey(t, tmp)
	// No agent ever listens at the address: the hypervisor exits first.
	code := h.run("run", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"), "--sign-key", keyFile,
		"--cred", "k=file:"+secretFile(t, tmp, "k", []byte("value")), "--connect", "unix:"+filepath.Join(tmp, "no-agent.sock"),
		"--status-dir", filepath.Join(tmp, "status"), "--timeout", "20s", "--", self, helperMarker, "dump", "0")
	want := "the hypervisor exited 0 but the guest never reported"
	if code != 0 || strings.Count(h.log.String(), want) != 1 || !strings.Contains(h.log.String(), "run exits 0") {
		t.Errorf("exit %d, want 0 with one warning %q; log %s", code, want, h.log.String())
	}
}
