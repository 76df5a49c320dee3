package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/host/readiness"
)

// TestSecretChangedAfterPack (issue 18, item 2): a secret that changed
// between pack (the firmware a QEMU guest boots with) and the session is
// no failure any more: push re-reads the sources, signs the current
// values for the agent's challenge and sends them by the session, which
// supersedes what firmware brought. The guest boots ready with the old
// value, push exits 0, and the credstore holds the new one. (Before the
// host-dialed session, the host refused to serve a changed value and the
// guest retried until --timeout, exit 4.)
func TestSecretChangedAfterPack(t *testing.T) {
	work := shortDir(t)
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "k")); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	key, pub := filepath.Join(work, "k.key"), filepath.Join(work, "k.pub")
	old, changed := randomText(), randomText()
	src := writeSecretFiles(t, filepath.Join(work, "src"), map[string][]byte{"api-key": old, "db": randomText()})
	dmi := filepath.Join(work, "DMI")
	if r := run(t, built.host, nil, append([]string{"pack", "--vm", "demo", "--hypervisor", "dmi", "--out", dmi, "--sign-key", key}, src...)...); r.code != 0 {
		t.Fatalf("pack: exit %d: %s", r.code, r.stderr)
	}
	p := filepath.Join(work, "src", "api-key")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, changed, 0o400); err != nil {
		t.Fatal(err)
	}
	store, status, hostStatus := filepath.Join(shmDir(t), "credstore"), filepath.Join(work, "gst"), filepath.Join(work, "hst")
	sock := filepath.Join(work, "a.sock")
	agent := startProc(t, "agent", nil, nil, built.guest, "agent", "--listen", "unix:"+sock, "--dmi-table", dmi, "--trust-key", pub, "--vm", "demo",
		"--credstore", store, "--status-dir", status, "--system-credentials", "")
	waitForSocket(t, sock)
	r := run(t, built.host, nil, append([]string{"push", "--vm", "demo", "--connect", "unix:" + sock, "--sign-key", key, "--status-dir", hostStatus, "--timeout", "15s"}, src...)...)
	if r.code != 0 {
		t.Fatalf("push after the secret changed: exit %d: %s", r.code, r.stderr)
	}
	if got, err := os.ReadFile(filepath.Join(store, "api-key")); err != nil || !bytes.Equal(got, changed) {
		t.Errorf("credstore api-key is not the value changed after pack (%v)", err)
	}
	if r := run(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", hostStatus, "--timeout", "15s"); r.code != 0 {
		t.Errorf("wait: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	agent.cmd.Process.Signal(syscall.SIGTERM)
	agent.wait(t, 10*time.Second)
}

// TestHostCannotServe (issue 18, item 2): a source push cannot read ends
// push before it dials (exit 3, naming the file), and records why, so
// `wait` fails at once with that reason (exit 1) instead of waiting for a
// report that will never come.
func TestHostCannotServe(t *testing.T) {
	work := shortDir(t)
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "k")); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	hostStatus, missing := filepath.Join(work, "hst"), filepath.Join(work, "no-such-secret")
	r := run(t, built.host, nil, "push", "--vm", "demo", "--connect", "unix:"+filepath.Join(work, "a.sock"), "--sign-key", filepath.Join(work, "k.key"),
		"--status-dir", hostStatus, "--timeout", "60s", "--cred", "api-key=file:"+missing)
	if r.code != 3 || !strings.Contains(r.stderr, missing) {
		t.Fatalf("push with a missing source: exit %d, %q; want 3 naming it", r.code, r.stderr)
	}
	w := run(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", hostStatus, "--timeout", "60s")
	if w.code != 1 || !strings.Contains(w.stderr, missing) || strings.Count(w.stderr, missing) != 1 {
		t.Errorf("wait: exit %d, %q; want 1 at once, naming the file once", w.code, w.stderr)
	}
}

// TestWaitDeadPush (issue 18, item 5): push records "waiting" with its
// PID and start time before it dials; killed while it dials (the guest
// never came up), `wait` fails at once (exit 1) saying so, instead of
// running to its timeout.
func TestWaitDeadPush(t *testing.T) {
	work := shortDir(t)
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "k")); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	hostStatus := filepath.Join(work, "hst")
	src := writeSecretFiles(t, filepath.Join(work, "src"), map[string][]byte{"api-key": randomText()})
	push := startProc(t, "push", nil, nil, built.host, append([]string{"push", "--vm", "demo", "--connect", "unix:" + filepath.Join(work, "nobody.sock"),
		"--sign-key", filepath.Join(work, "k.key"), "--status-dir", hostStatus, "--timeout", "120s"}, src...)...)
	for i := 0; ; i++ {
		st, err := readiness.Read(hostStatus, "demo")
		if err == nil && st.State == readiness.Waiting {
			if st.PID != push.cmd.Process.Pid || st.PIDStart == 0 {
				t.Fatalf("waiting status names pid %d (start %d), push is %d", st.PID, st.PIDStart, push.cmd.Process.Pid)
			}
			break
		}
		if i == 1000 {
			t.Fatalf("push recorded no waiting status: %v %+v", err, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	push.cmd.Process.Kill()
	push.wait(t, 10*time.Second)
	w := run(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", hostStatus, "--timeout", "120s")
	if w.code != 1 || !strings.Contains(w.stderr, "ended without a report") {
		t.Errorf("wait after push died: exit %d, %q; want 1 at once", w.code, w.stderr)
	}
	// A mistyped --status-dir: no folder, after the grace: exit 3.
	w = run(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", hostStatus+"-typo", "--folder-grace", "200ms", "--timeout", "120s")
	if w.code != 3 || !strings.Contains(w.stderr, "no status folder") {
		t.Errorf("wait on a missing folder: exit %d, %q; want 3", w.code, w.stderr)
	}
}

// TestRefusalSaidOnce (issue 18, item 3): a session the agent refuses
// (here: signed for another VM) fails push and wait with exit 1, the
// reason and the fix that works, each said once.
func TestRefusalSaidOnce(t *testing.T) {
	v := startSimVM(t)
	dir := filepath.Join(v.work, "src")
	src := writeSecretFiles(t, dir, map[string][]byte{"api-key": randomText()})
	r := run(t, built.host, nil, append([]string{"push", "--vm", "other", "--connect", "unix:" + v.sock, "--sign-key", v.key, "--status-dir", v.hostStatus, "--timeout", "15s"}, src...)...)
	const why, fix = "manifest is for another vm", "give push --vm the name"
	if r.code != 1 || strings.Count(r.stderr, why) != 1 || strings.Count(r.stderr, fix) != 1 {
		t.Errorf("push for another VM: exit %d:\n%s\nwant 1, the reason and the fix once each", r.code, r.stderr)
	}
	w := run(t, built.host, nil, "wait", "--vm", "other", "--status-dir", v.hostStatus, "--timeout", "15s")
	out := w.stdout + w.stderr
	if w.code != 1 || strings.Count(out, why) != 1 || strings.Count(out, fix) != 1 {
		t.Errorf("wait: exit %d:\n%s\nwant 1, the reason and the fix once each", w.code, out)
	}
	for _, stale := range []string{"serve", "modprobe", "token", "restart"} {
		if strings.Contains(r.stderr+out, stale) {
			t.Errorf("advice %q no longer applies: %s%s", stale, r.stderr, out)
		}
	}
	v.stop(t)
}
