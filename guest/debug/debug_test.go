package debug

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

func TestTableFitsWidth(t *testing.T) {
	tests := []struct {
		name string
		rows [][]string
		want string
	}{
		{"short", [][]string{{"api-key", "32", "ok"}}, "NAME     SIZE  STATUS\napi-key    32  ok\n"},
		{"none", nil, ""},
		{"long name is cut", [][]string{{strings.Repeat("n", 90), "32", "ok"}},
			"NAME" + strings.Repeat(" ", 62) + "  SIZE  STATUS\n" + strings.Repeat("n", 65) + "…    32  ok\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "SIZE", right: true}, {head: "STATUS"}}, rows: tc.rows}
			var b bytes.Buffer
			tb.write(&b)
			if diff := cmp.Diff(tc.want, b.String()); diff != "" {
				t.Errorf("table (-want +got):\n%s", diff)
			}
			for _, l := range strings.Split(b.String(), "\n") {
				if runeLen(l) > Width {
					t.Errorf("line of %d columns: %q", runeLen(l), l)
				}
			}
		})
	}
}

func TestWrap(t *testing.T) {
	var b bytes.Buffer
	long := strings.Repeat("word ", 30) + "/a/path/" + strings.Repeat("x", 90)
	wrap(&b, "KEY  ", long)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if !strings.HasPrefix(lines[0], "KEY  word") || !strings.HasPrefix(lines[1], "     word") {
		t.Errorf("bad indentation:\n%s", b.String())
	}
	for _, l := range lines[:len(lines)-1] {
		if runeLen(l) > Width {
			t.Errorf("line of %d columns: %q", runeLen(l), l)
		}
	}
	if last := lines[len(lines)-1]; strings.TrimSpace(last) != "/a/path/"+strings.Repeat("x", 90) {
		t.Errorf("an over-long word should get a line of its own, got %q", last)
	}
}

func TestDefaultSearchPath(t *testing.T) {
	want := []string{"/run/credentials/@system", "/etc/credstore", "/run/credstore", "/usr/local/lib/credstore", "/usr/lib/credstore"}
	if diff := cmp.Diff(want, DefaultSearchPath(DefaultSystemCredentials, agent.DefaultCredstore)); diff != "" {
		t.Errorf("search path (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[1:], DefaultSearchPath("", agent.DefaultCredstore)); diff != "" {
		t.Errorf("without @system (-want +got):\n%s", diff)
	}
}

func TestHostAck(t *testing.T) {
	tests := []struct {
		fetch *agent.ChannelStep
		text  string
	}{
		{nil, "n/a (no channel)"},
		{&agent.ChannelStep{Reported: true, Acknowledged: true, Ack: "ready"}, "yes: ready"},
		{&agent.ChannelStep{Reported: true, Acknowledged: true}, "yes"},
		{&agent.ChannelStep{ReportError: "read ack: timeout"}, "no: read ack: timeout"},
		{&agent.ChannelStep{Error: "dial: refused"}, "no: the session failed before its report went out"},
	}
	for _, tc := range tests {
		if got := hostAck(agent.Report{Fetch: tc.fetch}).String(); got != tc.text {
			t.Errorf("%+v: %q, want %q", tc.fetch, got, tc.text)
		}
	}
}

// envelope builds a manifest for vm listing one credential, signed with k
// (unsigned when nil).
func envelope(t *testing.T, k ed25519.PrivateKey, vm string, notAfter time.Time) []byte {
	t.Helper()
	b := manifest.NewBuilder(vm, time.Unix(1e9, 0))
	b.SetNotAfter(notAfter)
	if err := b.Add("api-key", credential.NewSecret([]byte("x")), manifest.DeliverySMBIOS, false); err != nil {
		t.Fatal(err)
	}
	env, err := b.Envelope(k)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestManifestFinding maps real errors from the manifest package, as the
// live verify sees them and as the status file records them, to codes.
func TestManifestFinding(t *testing.T) {
	a := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))
	b := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	trustA := []ed25519.PublicKey{a.Public().(ed25519.PublicKey)}
	later := time.Unix(2e9, 0)
	tampered := envelope(t, a, "demo", later)
	tampered[len(tampered)-1] ^= 1

	openErr := func(env []byte, keys []ed25519.PublicKey) string {
		_, _, err := manifest.Open(env, keys)
		if err == nil {
			t.Fatal("opened")
		}
		return agent.ManifestName + ": " + err.Error()
	}
	checkErr := func(now time.Time, vm string) string {
		m, _, err := manifest.Open(envelope(t, a, "demo", later), trustA)
		if err != nil {
			t.Fatal(err)
		}
		return agent.ManifestName + ": " + m.Check(now, vm).Error()
	}
	tests := []struct {
		msg, code string
		mention   string
	}{
		{openErr(envelope(t, b, "demo", later), trustA), CodeManifestUnknownKey, manifest.KeyID(b.Public().(ed25519.PublicKey))},
		{openErr(tampered, trustA), CodeManifestBadSignature, "repack"},
		{openErr(envelope(t, nil, "demo", later), trustA), CodeManifestUnsigned, "--sign-key"},
		{checkErr(time.Unix(2e9+1, 0), ""), CodeManifestExpired, "restart the VM"},
		{checkErr(time.Unix(1e9, 0), "other"), CodeManifestWrongVM, "--vm"},
		{"no " + agent.ManifestName + " credential: nothing to verify against", CodeManifestMissing, "--allow-unverified"},
		{openErr([]byte("junk"), nil), CodeManifestInvalid, "repack"},
	}
	for _, tc := range tests {
		f := manifestFinding(tc.msg, "")
		if f.Code != tc.code || f.Severity != SeverityError {
			t.Errorf("%q: code %s (%s), want %s", tc.msg, f.Code, f.Severity, tc.code)
		}
		if !strings.Contains(f.Message+" "+f.Fix, tc.mention) {
			t.Errorf("%s: %q / %q does not mention %q", tc.code, f.Message, f.Fix, tc.mention)
		}
		if f.Fix == "" {
			t.Errorf("%s: no fix", tc.code)
		}
	}
}

func TestHashAll(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("a", "alpha", 0o400)
	write("empty", "", 0o400)
	big := strings.Repeat("0123456789", 20000) // bigger than the read buffer
	write("big", big, 0o400)
	if err := os.Symlink("a", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	got := hashAll(dir, []string{"a", "empty", "big", "link", "fifo", "sub", "gone"})
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	for name, v := range map[string]string{"a": "alpha", "empty": "", "big": big} {
		if d := got[name]; d.err != nil || d.sum != sum(v) || d.size != int64(len(v)) {
			t.Errorf("%s: %+v", name, d)
		}
	}
	for _, name := range []string{"link", "fifo", "sub", "gone"} {
		if got[name].err == nil {
			t.Errorf("%s: hashed, want an error", name)
		}
	}
}

func TestListCredstoreSkipsWhatSystemdSkips(t *testing.T) {
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"ok": 0o400, "loose": 0o644, ".vmcred-tmp:x": 0o400} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("v-"+name), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("ok", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	l, err := ListCredstore(Inspector{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range l.Credentials {
		names = append(names, c.Name+":"+c.Mode+":"+c.Security)
	}
	var skipped []string
	for _, s := range l.Skipped {
		skipped = append(skipped, s.Name+":"+s.Reason)
	}
	if diff := cmp.Diff([]string{"loose:0644:insecure", "ok:0400:" + l.Credentials[1].Security}, names); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{".vmcred-tmp:x:not a valid credential name", "link:not a regular file"}, skipped); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	found := false
	for _, f := range l.Findings {
		found = found || (f.Code == CodeCredstoreInsecure && f.Credential == "loose" && strings.Contains(f.Fix, "chmod 0400"))
	}
	if !found {
		t.Errorf("no credstore-insecure finding for loose: %+v", l.Findings)
	}
}

func TestStatusShowsHostAck(t *testing.T) {
	// The agent wants a status folder of its own, 0700: t.TempDir is 0755.
	dir := filepath.Join(t.TempDir(), "vmcred")
	rep := agent.Report{Outcome: agent.OutcomeReady, Summary: "1 credential verified", Policy: agent.PolicyDigest, Credstore: "/run/credstore",
		Credentials: []agent.CredentialResult{{Name: "a", Size: 1, SHA256: strings.Repeat("0", 64), Verification: agent.PolicyDigest}}}
	text := func(rep agent.Report) string {
		if err := agent.WriteStatus(dir, rep); err != nil {
			t.Fatal(err)
		}
		st, err := ReadStatus(Inspector{StatusDir: dir}, "")
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := st.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if s := text(rep); !strings.Contains(s, "Host ack       n/a (no channel)\n") {
		t.Errorf("no n/a for a load without a channel:\n%s", s)
	}
	rep.Fetch = &agent.ChannelStep{Address: "vsock:2:1034", Attempts: 1, Received: []string{"a"}, Reported: true, Acknowledged: true, Ack: "ready"}
	s := text(rep)
	for _, want := range []string{"Host ack       yes: ready\n", "Channel        session from vsock:2:1034: 1 credential received\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("status lacks %q:\n%s", want, s)
		}
	}
}
