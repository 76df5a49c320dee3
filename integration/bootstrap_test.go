package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/host/emit"
	"github.com/vmcred/vmcred/host/readiness"
)

// bootstrapSetup packs vm "demo" for firecracker (bootstrap mode: the
// manifest goes by channel) and starts serve on a Unix socket. It returns
// the work folder, the socket, the status folder and the secret values.
func bootstrapSetup(t *testing.T, extraPack ...string) (work, sock, status string, vals map[string][]byte, serveOut *lockedBuffer) {
	t.Helper()
	work = shortDir(t)
	secrets := filepath.Join(work, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	vals = map[string][]byte{"api-key": []byte("api-" + rand.Text()), "db-password": []byte("db-" + rand.Text() + "\n")}
	for name, v := range vals {
		if err := os.WriteFile(filepath.Join(secrets, name), v, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"host", "other"} {
		if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, k)); r.code != 0 {
			t.Fatalf("keygen: %d %s", r.code, r.stderr)
		}
	}
	sock = filepath.Join(work, "fc.vsock_5000")
	rt, status := filepath.Join(work, "run"), filepath.Join(work, "status")
	args := append([]string{"pack", "--vm", "demo", "--hypervisor", "firecracker", "--sign-key", filepath.Join(work, "host.key"),
		"--cred", "api-key=file:" + filepath.Join(secrets, "api-key"), "--cred", "db-password=file:" + filepath.Join(secrets, "db-password"),
		"--static", "ENVIRONMENT=test", "--channel", "unix:" + sock, "--runtime-dir", rt}, extraPack...)
	r := run(t, built.host, nil, args...)
	if r.code != 0 {
		t.Fatalf("pack: exit %d: %s", r.code, r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("pack firecracker printed arguments: %q", r.stdout)
	}
	vals["ENVIRONMENT"] = []byte("test")
	fi, err := os.Stat(filepath.Join(rt, emit.ChannelManifestFile))
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("manifest file: %v (want mode 0400)", err)
	}
	st, err := hostchannel.ReadState(rt)
	if err != nil || !st.Bootstrap || !st.Tokenless {
		t.Fatalf("serve state: bootstrap=%v tokenless=%v (%v)", st != nil && st.Bootstrap, st != nil && st.Tokenless, err)
	}
	_, serveOut = background(t, built.host, nil, "serve", "--vm", "demo", "--listen", "unix:"+sock, "--runtime-dir", rt, "--status-dir", status)
	waitForSocket(t, sock)
	return work, sock, status, vals, serveOut
}

// TestBootstrapEndToEnd: Firecracker (no firmware at all): the agent gets
// the signed manifest and every credential over the channel, verifies
// them, writes the credstore, and wait exits 0. A second load (what a
// process that raced the agent would cause) fails loudly.
func TestBootstrapEndToEnd(t *testing.T) {
	work, sock, status, vals, serveOut := bootstrapSetup(t)
	wait, waitOut := background(t, built.host, nil, "wait", "--vm", "demo", "--status-dir", status, "--timeout", "30s")

	store := filepath.Join(shmDir(t), "credstore")
	load := run(t, built.guest, nil, "load", "--dmi-table", filepath.Join(work, "no-such-DMI"), "--trust-key", filepath.Join(work, "host.pub"), "--vm", "demo",
		"--credstore", store, "--status-dir", filepath.Join(work, "guest-status"), "--system-credentials", "",
		"--channel", "unix:"+sock, "--timeout", "10s")
	if load.code != 0 {
		t.Fatalf("load: exit %d\n%s\nserve:\n%s", load.code, load.stderr, serveOut)
	}
	entries, _ := os.ReadDir(store)
	if len(entries) != len(vals) {
		t.Errorf("credstore has %d files, want %d", len(entries), len(vals))
	}
	for name, want := range vals {
		got, err := os.ReadFile(filepath.Join(store, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("credstore %s: %d bytes, want %d exactly (%v)", name, len(got), len(want), err)
		}
	}
	if code := exitCode(t, wait, 30*time.Second); code != 0 {
		t.Fatalf("wait: exit %d: %s", code, waitOut)
	}
	st, err := readiness.Read(status, "demo")
	if err != nil || st.State != readiness.Ready {
		t.Fatalf("host status %+v (%v)", st, err)
	}
	var guest struct {
		Policy         string `json:"policy"`
		ManifestSource string `json:"manifest_source"`
		Fetch          struct {
			Acknowledged bool     `json:"acknowledged"`
			Received     []string `json:"received"`
		} `json:"fetch"`
	}
	b, _ := os.ReadFile(filepath.Join(work, "guest-status", "status.json"))
	if err := json.Unmarshal(b, &guest); err != nil || guest.Policy != "signature" || guest.ManifestSource != "channel" || !guest.Fetch.Acknowledged {
		t.Errorf("guest status: policy %q, manifest_source %q, acknowledged %v (%v)", guest.Policy, guest.ManifestSource, guest.Fetch.Acknowledged, err)
	}
	// The manifest came by channel, so no firmware holds it: the agent
	// saved it next to status.json, and verify and list re-check its
	// signature there.
	saved := filepath.Join(work, "guest-status", "manifest")
	if fi, err := os.Stat(saved); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("saved manifest %s: %v (want mode 0600)", saved, err)
	}
	var want struct {
		KeyID string `json:"key_id"`
	}
	if err := json.Unmarshal(b, &want); err != nil || len(want.KeyID) != 16 {
		t.Fatalf("status key_id %q (%v)", want.KeyID, err)
	}
	debugArgs := []string{"--trust-key", filepath.Join(work, "host.pub"), "--credstore", store, "--status-dir", filepath.Join(work, "guest-status"),
		"--system-credentials", "", "--search-path", store, "--json"}
	verify := run(t, built.guest, nil, append([]string{"verify", "--dmi-table", filepath.Join(work, "no-such-DMI"), "--vm", "demo"}, debugArgs...)...)
	list := run(t, built.guest, nil, append([]string{"list"}, debugArgs...)...)
	for what, r := range map[string]result{"verify": verify, "list": list} {
		var got struct {
			Policy       string `json:"policy"`
			KeyID        string `json:"key_id"`
			ManifestFrom string `json:"manifest_from"`
			ManifestFile string `json:"manifest_file"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &got); r.code != 0 || err != nil || got.Policy != "signature" || got.KeyID != want.KeyID || got.ManifestFrom != "saved" || got.ManifestFile != saved {
			t.Errorf("%s: exit %d, %+v (%v); want 0, policy signature, key %s, from saved %s\n%s", what, r.code, got, err, want.KeyID, saved, r.stderr)
		}
	}
	// One byte changed: refused, naming the file.
	env, err := os.ReadFile(saved)
	if err != nil {
		t.Fatal(err)
	}
	env[len(env)/2] ^= 1
	if err := os.WriteFile(saved, env, 0o600); err != nil {
		t.Fatal(err)
	}
	tampered := run(t, built.guest, nil, "verify", "--dmi-table", filepath.Join(work, "no-such-DMI"), "--vm", "demo", "--trust-key", filepath.Join(work, "host.pub"),
		"--credstore", store, "--status-dir", filepath.Join(work, "guest-status"), "--system-credentials", "", "--search-path", store)
	if tampered.code != 1 || !strings.Contains(tampered.stderr, saved) || !strings.Contains(tampered.stdout, "does not verify") {
		t.Errorf("verify with a changed saved manifest: exit %d, want 1 naming %s:\n%s%s", tampered.code, saved, tampered.stdout, tampered.stderr)
	}

	for what, out := range map[string]string{"serve": serveOut.String(), "load": load.stderr + load.stdout, "status": string(b),
		"verify": verify.stdout + verify.stderr, "list": list.stdout + list.stderr, "tampered verify": tampered.stdout + tampered.stderr} {
		for name, v := range vals {
			if name != "ENVIRONMENT" && strings.Contains(out, string(v)) {
				t.Errorf("%s output holds the value of %s", what, name)
			}
		}
	}

	// Once per pack: a second fetch is refused, and says so.
	load2 := run(t, built.guest, nil, "load", "--dmi-table", filepath.Join(work, "no-such-DMI"), "--trust-key", filepath.Join(work, "host.pub"),
		"--credstore", filepath.Join(shmDir(t), "credstore"), "--status-dir", filepath.Join(work, "guest-status2"), "--system-credentials", "",
		"--channel", "unix:"+sock, "--timeout", "2s")
	if load2.code != 1 || !strings.Contains(load2.stderr, "already-fetched") {
		t.Errorf("second load: exit %d, want 1 with already-fetched:\n%s", load2.code, load2.stderr)
	}
	for _, name := range []string{"manifest", ".manifest.tmp"} {
		if _, err := os.Lstat(filepath.Join(work, "guest-status2", name)); !os.IsNotExist(err) {
			t.Errorf("the failed load left %s in its status folder (%v)", name, err)
		}
	}
}

// TestBootstrapRefused: without a trust key the agent refuses bootstrap
// (before dialing); a manifest signed by another key is refused, and
// nothing is written either way.
func TestBootstrapRefused(t *testing.T) {
	work, sock, _, _, serveOut := bootstrapSetup(t)
	load := func(label string, extra ...string) result {
		t.Helper()
		store := filepath.Join(shmDir(t), "credstore")
		args := append([]string{"load", "--dmi-table", filepath.Join(work, "no-such-DMI"), "--vm", "demo",
			"--credstore", store, "--status-dir", filepath.Join(work, "guest-status-"+label), "--system-credentials", "",
			"--channel", "unix:" + sock, "--timeout", "5s"}, extra...)
		r := run(t, built.guest, nil, args...)
		if entries, _ := os.ReadDir(store); len(entries) != 0 {
			t.Errorf("%s: credstore has %d files, want none", label, len(entries))
		}
		return r
	}
	r := load("no-key")
	if r.code != 1 || !strings.Contains(r.stderr, "bootstrap refused") || !strings.Contains(r.stderr, "--trust-key") {
		t.Errorf("without a trust key: exit %d, want 1 naming bootstrap and --trust-key:\n%s", r.code, r.stderr)
	}
	r = load("other-key", "--trust-key", filepath.Join(work, "other.pub"))
	if r.code != 1 || !strings.Contains(r.stderr, "vmcred.manifest") {
		t.Errorf("manifest signed by another key: exit %d, want 1 naming vmcred.manifest:\n%s\nserve:\n%s", r.code, r.stderr, serveOut)
	}
}

// TestServeRefusesEmptyTokenOutsideBootstrap: a manifest with a token (a
// DMI table) is not served to a HELLO with the all-zero token and a zero
// nonce, which is what bootstrap mode sends.
func TestServeRefusesEmptyTokenOutsideBootstrap(t *testing.T) {
	work := shortDir(t)
	secret := filepath.Join(work, "s")
	if err := os.WriteFile(secret, []byte("value-"+rand.Text()), 0o400); err != nil {
		t.Fatal(err)
	}
	if r := run(t, built.host, nil, "keygen", "--out", filepath.Join(work, "host")); r.code != 0 {
		t.Fatalf("keygen: %d %s", r.code, r.stderr)
	}
	sock, rt, status := filepath.Join(work, "vm.vsock_5000"), filepath.Join(work, "run"), filepath.Join(work, "status")
	r := run(t, built.host, nil, "pack", "--vm", "demo", "--hypervisor", "dmi", "--out", filepath.Join(work, "DMI"),
		"--sign-key", filepath.Join(work, "host.key"), "--cred", "k=file:"+secret, "--channel", "unix:"+sock, "--runtime-dir", rt)
	if r.code != 0 {
		t.Fatalf("pack: exit %d: %s", r.code, r.stderr)
	}
	if st, err := hostchannel.ReadState(rt); err != nil || st.Bootstrap || st.Tokenless {
		t.Fatalf("serve state: want a token and no bootstrap (%v)", err)
	}
	serve, serveOut := background(t, built.host, nil, "serve", "--vm", "demo", "--listen", "unix:"+sock, "--runtime-dir", rt, "--status-dir", status)
	waitForSocket(t, sock)
	// The agent with no firmware manifest but --channel tries bootstrap.
	load := run(t, built.guest, nil, "load", "--dmi-table", filepath.Join(work, "no-such-DMI"), "--trust-key", filepath.Join(work, "host.pub"),
		"--credstore", filepath.Join(shmDir(t), "credstore"), "--status-dir", filepath.Join(work, "guest-status"), "--system-credentials", "",
		"--channel", "unix:"+sock, "--timeout", "5s")
	if load.code != 1 || !strings.Contains(load.stderr, "bad-token") && !strings.Contains(load.stderr, "token does not match") {
		t.Errorf("bootstrap against a tokened pack: exit %d, want 1 with a token refusal:\n%s\nserve:\n%s", load.code, load.stderr, serveOut)
	}
	serve.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, serve, 10*time.Second); code != 0 {
		t.Errorf("serve exit %d:\n%s", code, serveOut)
	}
}
