package main

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// savedView is what the saved-manifest tests read from verify, list and
// show --json.
type savedView struct {
	Policy       string `json:"policy"`
	ManifestFrom string `json:"manifest_from"`
	ManifestFile string `json:"manifest_file"`
	KeyID        string `json:"key_id"`
	Manifest     *struct{ From, File, Signature string }
	Findings     []debug.Finding `json:"findings"`
}

func decodeView(t *testing.T, out []byte) savedView {
	t.Helper()
	var v savedView
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return v
}

// finding returns the first finding with code, if any.
func (v savedView) finding(code string) (debug.Finding, bool) {
	for _, f := range v.Findings {
		if f.Code == code {
			return f, true
		}
	}
	return debug.Finding{}, false
}

const savedPath = "/run/vmcred/" + agent.ManifestFile

// TestSavedManifest: after a host session (the real agent, the manifest
// received over a Unix socket), verify, list and show check the copy the
// load saved, signature first, and say so; a copy with one byte changed,
// or checked without trust keys, is refused naming the file; without a
// copy they behave as before; and a manifest in firmware wins over one.
func TestSavedManifest(t *testing.T) {
	keyID := manifest.KeyID(key(1).Public().(ed25519.PublicKey))

	t.Run("verified", func(t *testing.T) {
		tr := build(t, "session", fixedValue)
		for _, args := range [][]string{{"verify", "--json"}, {"list", "--json"}} {
			r := run(tr.defaults(), args...)
			v := decodeView(t, r.stdout)
			if r.code != 0 || v.Policy != agent.PolicySignature || v.KeyID != keyID || v.ManifestFrom != debug.ManifestFromSaved || v.ManifestFile != savedPath {
				t.Errorf("%s: exit %d, policy %q, key %q, from %q, file %q; want 0, signature, %s, saved, %s\n%s", args[0], r.code, v.Policy, v.KeyID, v.ManifestFrom, v.ManifestFile, keyID, savedPath, r.stderr)
			}
		}
		r := run(tr.defaults(), "show", "api-key", "--json")
		if v := decodeView(t, r.stdout); r.code != 0 || v.Manifest == nil || v.Manifest.From != debug.ManifestFromSaved || v.Manifest.Signature != "trusted" {
			t.Errorf("show: exit %d, manifest %+v", r.code, v.Manifest)
		}
	})

	t.Run("one byte changed", func(t *testing.T) {
		tr := build(t, "session", fixedValue)
		b, err := os.ReadFile(tr.path(savedPath))
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x01
		tr.write(savedPath, b, 0o600)

		r := run(tr.defaults(), "verify", "--json")
		v := decodeView(t, r.stdout)
		f, ok := v.finding(debug.CodeManifestBadSignature)
		if r.code != 1 || v.Policy != "refused" || !ok || !strings.Contains(f.Message, savedPath) {
			t.Errorf("verify: exit %d, policy %q, findings %+v; want 1, refused, %s naming %s", r.code, v.Policy, v.Findings, debug.CodeManifestBadSignature, savedPath)
		}
		if !strings.Contains(string(r.stderr), savedPath) {
			t.Errorf("verify's error does not name %s: %s", savedPath, r.stderr)
		}
		r = run(tr.defaults(), "verify")
		if !strings.Contains(string(r.stdout), savedPath) || !strings.Contains(string(r.stdout), "FAILED") {
			t.Errorf("verify's text does not name %s or say FAILED:\n%s", savedPath, r.stdout)
		}

		r = run(tr.defaults(), "list", "--json")
		if v := decodeView(t, r.stdout); r.code != 0 || v.Policy != "refused" {
			t.Errorf("list: exit %d, policy %q; want 0 (list does not verify), refused", r.code, v.Policy)
		} else if _, ok := v.finding(debug.CodeManifestBadSignature); !ok {
			t.Errorf("list: findings %+v lack %s", v.Findings, debug.CodeManifestBadSignature)
		}
		r = run(tr.defaults(), "show", "api-key", "--json")
		if v := decodeView(t, r.stdout); v.Manifest == nil || v.Manifest.Signature != "refused" {
			t.Errorf("show: manifest %+v, want the signature refused", v.Manifest)
		}
	})

	t.Run("no saved copy", func(t *testing.T) {
		tr := build(t, "session", fixedValue)
		if err := os.Remove(tr.path(savedPath)); err != nil {
			t.Fatal(err)
		}
		// As before the copy existed: no firmware, so verify cannot run.
		r := run(tr.defaults(), "verify", "--json")
		if v := decodeView(t, r.stdout); r.code != 3 || v.Policy != "none" || v.ManifestFrom != "" {
			t.Errorf("verify: exit %d, policy %q, from %q; want 3, none, no source", r.code, v.Policy, v.ManifestFrom)
		}
		r = run(tr.defaults(), "list", "--json")
		if v := decodeView(t, r.stdout); r.code != 0 || v.Policy != "" || v.ManifestFrom != "" {
			t.Errorf("list: exit %d, policy %q, from %q; want 0 and neither", r.code, v.Policy, v.ManifestFrom)
		}
		r = run(tr.defaults(), "show", "api-key", "--json")
		if v := decodeView(t, r.stdout); r.code != 0 || v.Manifest != nil {
			t.Errorf("show: exit %d, manifest %+v; want 0 and none", r.code, v.Manifest)
		}
	})

	t.Run("no trust keys", func(t *testing.T) {
		tr := build(t, "session", fixedValue)
		if err := os.RemoveAll(tr.path("etc/vmcred/trusted.d")); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"verify", "--json"}, {"list", "--json"}} {
			r := run(tr.defaults(), args...)
			v := decodeView(t, r.stdout)
			f, ok := v.finding(debug.CodeNoTrustKeys)
			if v.Policy != "refused" || !ok || f.Severity != debug.SeverityError || !strings.Contains(f.Message, savedPath) {
				t.Errorf("%s: exit %d, policy %q, findings %+v; want refused with an error %s naming %s", args[0], r.code, v.Policy, v.Findings, debug.CodeNoTrustKeys, savedPath)
			}
			if args[0] == "verify" && r.code != 1 {
				t.Errorf("verify: exit %d, want 1", r.code)
			}
		}
	})

	t.Run("vm and expiry", func(t *testing.T) {
		tr := build(t, "session", fixedValue)
		r := run(tr.defaults(), "verify", "--vm", "other", "--json")
		if f, ok := decodeView(t, r.stdout).finding(debug.CodeManifestWrongVM); r.code != 1 || !ok || !strings.Contains(f.Message, savedPath) {
			t.Errorf("verify --vm other: exit %d, want 1 with %s naming %s", r.code, debug.CodeManifestWrongVM, savedPath)
		}
		d := tr.defaults()
		d.now = func() time.Time { return issuedAt.Add(8 * 24 * time.Hour) }
		r = run(d, "verify", "--json")
		if _, ok := decodeView(t, r.stdout).finding(debug.CodeManifestExpired); r.code != 1 || !ok {
			t.Errorf("verify after not-after: exit %d, want 1 with %s", r.code, debug.CodeManifestExpired)
		}
	})

	t.Run("unreadable copy", func(t *testing.T) {
		tr := build(t, "session", fixedValue)
		if err := os.Remove(tr.path(savedPath)); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(tr.path(savedPath), 0o700); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"verify", "--json"}, {"list", "--json"}} {
			r := run(tr.defaults(), args...)
			f, ok := decodeView(t, r.stdout).finding(debug.CodeStatusUnreadable)
			if r.code != 3 || !ok || !strings.Contains(f.Message, savedPath) {
				t.Errorf("%s: exit %d, want 3 with %s naming %s", args[0], r.code, debug.CodeStatusUnreadable, savedPath)
			}
		}
	})

	t.Run("the accepted manifest wins", func(t *testing.T) {
		// The agent keeps a session's manifest; when there is one, it is
		// the one the views check, firmware or not (one policy: the
		// manifest the agent accepted). A damaged copy is refused, naming
		// the file, rather than silently replaced by the firmware's.
		tr := build(t, "good", fixedValue)
		r := run(tr.defaults(), "verify", "--json")
		if v := decodeView(t, r.stdout); r.code != 0 || v.ManifestFrom != debug.ManifestFromFirmware || v.ManifestFile != "" {
			t.Errorf("verify without a saved copy: exit %d, from %q, file %q; want 0 and the firmware's manifest", r.code, v.ManifestFrom, v.ManifestFile)
		}
		tr.write(savedPath, []byte("not a manifest"), 0o600)
		r = run(tr.defaults(), "verify", "--json")
		if v := decodeView(t, r.stdout); r.code != 1 || v.ManifestFrom != debug.ManifestFromSaved || v.ManifestFile != savedPath {
			t.Errorf("verify with a damaged saved copy: exit %d, from %q, file %q; want 1 naming the saved copy", r.code, v.ManifestFrom, v.ManifestFile)
		}

		// list reads no firmware; the status file says the manifest came
		// from there.
		r = run(tr.defaults(), "list", "--json")
		if v := decodeView(t, r.stdout); r.code != 0 || v.ManifestFrom != "" || v.Policy != "" {
			t.Errorf("list: exit %d, from %q, policy %q; want 0 and no saved copy used", r.code, v.ManifestFrom, v.Policy)
		}
	})
}

// TestLoadWarnsOfUncheckedSignature: a signed manifest loaded without
// --trust-key succeeds on digests, and says once that the signature was
// present but not checked, and how to require it.
func TestLoadWarnsOfUncheckedSignature(t *testing.T) {
	tr := newTree(t, randomValue)
	k := key(1)
	v := tr.value("api-key", 32)
	mb := manifest.NewBuilder("demo", time.Now())
	if err := mb.Add("api-key", credential.NewSecret(v), manifest.DeliverySMBIOS, false); err != nil {
		t.Fatal(err)
	}
	env, err := mb.Envelope(k)
	if err != nil {
		t.Fatal(err)
	}
	tr.boot([]string{tr.oem(oemstring.PrefixBinary, agent.ManifestName, env), tr.oem(oemstring.PrefixVmcred, "api-key", v)})
	tr.trust(k.Public().(ed25519.PublicKey))
	dmi := tr.path("sys/firmware/dmi/tables/DMI")
	r := run(tr.defaults(), "load", "--dmi-table", dmi, "--credstore", filepath.Join(tr.root, "store"), "--status-dir", filepath.Join(tr.root, "st"),
		"--allow-persistent", "--system-credentials", "", "--vm", "demo")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	log := string(r.stderr)
	if n := strings.Count(log, "no --trust-key was given, so the signature was not checked"); n != 1 {
		t.Errorf("warning said %d times, want once:\n%s", n, log)
	}
	for _, w := range []string{"warn", "--trust-key", "the signature by ed25519 key"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	// With the key, no warning.
	r = run(tr.defaults(), "load", "--dmi-table", dmi, "--credstore", filepath.Join(tr.root, "store2"), "--status-dir", filepath.Join(tr.root, "st2"),
		"--allow-persistent", "--system-credentials", "", "--vm", "demo", "--trust-key", tr.path("etc/vmcred/trusted.d"))
	if r.code != 0 || strings.Contains(string(r.stderr), "not checked") {
		t.Errorf("with --trust-key: exit %d, log %s", r.code, r.stderr)
	}
}
