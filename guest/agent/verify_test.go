package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

var issued = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// packed is what a host would hand a VM: OEM strings with a manifest.
type packed struct {
	values map[string][]byte
	strs   []string
}

type packOpts struct {
	key      ed25519.PrivateKey // nil: unsigned
	vm       string
	notAfter time.Time
	prefix   string
}

func pack(t *testing.T, o packOpts, values map[string][]byte) packed {
	t.Helper()
	if o.vm == "" {
		o.vm = "test-vm"
	}
	if o.prefix == "" {
		o.prefix = oemstring.PrefixVmcred
	}
	b := manifest.NewBuilder(o.vm, issued)
	if !o.notAfter.IsZero() {
		b.SetNotAfter(o.notAfter)
	}
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	sort.Strings(names)
	p := packed{values: values}
	for _, n := range names {
		if err := b.Add(n, credential.NewSecret(values[n]), manifest.DeliverySMBIOS, false); err != nil {
			t.Fatal(err)
		}
		p.strs = append(p.strs, format(t, o.prefix, n, values[n]))
	}
	env, err := b.Envelope(o.key)
	if err != nil {
		t.Fatal(err)
	}
	p.strs = append(p.strs, format(t, oemstring.PrefixVmcred, ManifestName, env))
	return p
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func seedValues(t *testing.T) map[string][]byte {
	return map[string][]byte{
		"api-key": randomSecret(t, 32), "db-password": randomSecret(t, 24), "jwt-secret": randomSecret(t, 64),
		"ENVIRONMENT": []byte("test"), "CLUSTER": []byte("demo"),
	}
}

// storeNames lists the files in a credstore.
func storeNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	names := []string{}
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestSignedRoundTrip(t *testing.T) {
	pub, priv := newKey(t)
	values := seedValues(t)
	values["big10k"] = randomSecret(t, 10*1024)
	p := pack(t, packOpts{key: priv}, values)
	work := t.TempDir()
	store := filepath.Join(shmDir(t), "credstore")
	cfg := Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, p.strs, 0)}, Credstore: store,
		StatusDir: filepath.Join(work, "status"), TrustKeys: []ed25519.PublicKey{pub}, VM: "test-vm", Now: func() time.Time { return issued }}
	rep, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if rep.Policy != PolicySignature || rep.KeyID != manifest.KeyID(pub) {
		t.Errorf("policy %q key %q", rep.Policy, rep.KeyID)
	}
	if !strings.HasPrefix(rep.Summary, "6 credentials verified (ed25519 key ") {
		t.Errorf("summary %q", rep.Summary)
	}
	for name, want := range values {
		got, err := os.ReadFile(filepath.Join(store, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, want %d (%v)", name, len(got), len(want), err)
		}
		st, _ := os.Stat(filepath.Join(store, name))
		if st.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v", name, st.Mode())
		}
	}
	if diff := cmp.Diff([]string{"CLUSTER", "ENVIRONMENT", "api-key", "big10k", "db-password", "jwt-secret"}, storeNames(t, store)); diff != "" {
		t.Errorf("store (-want +got)\n%s", diff)
	}
}

func TestNear60KTable(t *testing.T) {
	values := map[string][]byte{"a": randomSecret(t, 20000), "b": randomSecret(t, 20000), "c": randomSecret(t, 4000)}
	p := pack(t, packOpts{}, values)
	total := 0
	for _, s := range p.strs {
		total += len(s) + 1
	}
	if total < 55000 {
		t.Fatalf("table only %d bytes", total)
	}
	work := t.TempDir()
	store := filepath.Join(shmDir(t), "credstore")
	_, err := Load(Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, p.strs, 0)}, Credstore: store, StatusDir: filepath.Join(work, "s"), VM: "test-vm"})
	if err != nil {
		t.Fatal(err)
	}
	for n, v := range values {
		if got, _ := os.ReadFile(filepath.Join(store, n)); !bytes.Equal(got, v) {
			t.Errorf("%s not intact", n)
		}
	}
}

// TestRefusals: each is exit 1, names the credential or key, and leaves the
// credstore as an earlier good load left it.
func TestRefusals(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	tests := []struct {
		name   string
		build  func(t *testing.T) []string
		cut    int
		keys   []ed25519.PublicKey
		expect string
	}{
		{name: "changed byte", keys: []ed25519.PublicKey{pub}, expect: `credential "api-key"`, build: func(t *testing.T) []string {
			p := pack(t, packOpts{key: priv}, seedValues(t))
			for i, s := range p.strs {
				if strings.Contains(s, ":api-key=") {
					// Flip one bit of the decoded value and re-encode.
					v := bytes.Clone(p.values["api-key"])
					v[3] ^= 1
					p.strs[i] = format(t, oemstring.PrefixVmcred, "api-key", v)
				}
			}
			return p.strs
		}},
		{name: "string dropped", keys: []ed25519.PublicKey{pub}, expect: `credential "db-password" is listed in the manifest`, build: func(t *testing.T) []string {
			p := pack(t, packOpts{key: priv}, seedValues(t))
			var out []string
			for _, s := range p.strs {
				if !strings.Contains(s, ":db-password=") {
					out = append(out, s)
				}
			}
			return out
		}},
		{name: "table truncated", keys: []ed25519.PublicKey{pub}, cut: 300, expect: "source damaged", build: func(t *testing.T) []string {
			return pack(t, packOpts{key: priv}, seedValues(t)).strs
		}},
		{name: "signed by another key", keys: []ed25519.PublicKey{pub}, expect: manifest.KeyID(otherPub), build: func(t *testing.T) []string {
			return pack(t, packOpts{key: otherPriv}, seedValues(t)).strs
		}},
		{name: "no manifest with a trust key", keys: []ed25519.PublicKey{pub}, expect: "no vmcred.manifest credential while a trust key is set", build: func(t *testing.T) []string {
			p := pack(t, packOpts{key: priv}, seedValues(t))
			return p.strs[:len(p.strs)-1]
		}},
		{name: "unsigned with a trust key", keys: []ed25519.PublicKey{pub}, expect: "unsigned", build: func(t *testing.T) []string {
			return pack(t, packOpts{}, seedValues(t)).strs
		}},
		{name: "past not-after", keys: []ed25519.PublicKey{pub}, expect: "expired", build: func(t *testing.T) []string {
			return pack(t, packOpts{key: priv, notAfter: issued.Add(time.Minute)}, seedValues(t)).strs
		}},
		{name: "wrong vm", keys: []ed25519.PublicKey{pub}, expect: "other-vm", build: func(t *testing.T) []string {
			return pack(t, packOpts{key: priv, vm: "other-vm"}, seedValues(t)).strs
		}},
		{name: "extra vmcred credential", keys: []ed25519.PublicKey{pub}, expect: `credential "injected" arrived under vmcred's prefix but is not in the manifest`, build: func(t *testing.T) []string {
			p := pack(t, packOpts{key: priv}, seedValues(t))
			return append(p.strs, format(t, oemstring.PrefixVmcred, "injected", []byte("evil")))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			work := t.TempDir()
			store := filepath.Join(shmDir(t), "credstore")
			status := filepath.Join(work, "status")
			// An earlier good boot's content, which a refused load keeps.
			prev := pack(t, packOpts{key: priv}, map[string][]byte{"old": []byte("kept")})
			if _, err := Load(Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, t.TempDir(), prev.strs, 0)}, Credstore: store, StatusDir: status, TrustKeys: []ed25519.PublicKey{pub}, VM: "test-vm", Now: func() time.Time { return issued }}); err != nil {
				t.Fatal(err)
			}
			cfg := Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, tt.build(t), tt.cut)}, Credstore: store, StatusDir: status, TrustKeys: tt.keys, VM: "test-vm", Now: func() time.Time { return issued.Add(time.Hour) }}
			_, err := Load(cfg)
			if err == nil {
				t.Fatal("load succeeded")
			}
			if cli.CodeOf(err) != cli.ExitFailure {
				t.Errorf("exit code %d, want 1: %v", cli.CodeOf(err), err)
			}
			if !strings.Contains(err.Error(), tt.expect) {
				t.Errorf("error %q lacks %q", err, tt.expect)
			}
			if diff := cmp.Diff([]string{"old"}, storeNames(t, store)); diff != "" {
				t.Errorf("credstore after a refused load (-want +got)\n%s", diff)
			}
			if b, _ := os.ReadFile(filepath.Join(store, "old")); string(b) != "kept" {
				t.Errorf("old content changed")
			}
		})
	}
}

// TestExtraSystemdCredentialNotExposed: a string another tool added under
// systemd's prefix is reported and not exposed, and the load succeeds.
func TestExtraSystemdCredentialNotExposed(t *testing.T) {
	pub, priv := newKey(t)
	p := pack(t, packOpts{key: priv}, seedValues(t))
	strs := append(p.strs, "io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888")
	work := t.TempDir()
	store := filepath.Join(shmDir(t), "credstore")
	rep, err := Load(Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, strs, 0)}, Credstore: store, StatusDir: filepath.Join(work, "s"), TrustKeys: []ed25519.PublicKey{pub}, VM: "test-vm", Now: func() time.Time { return issued }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(store, "vmm.notify_socket")); !errors.Is(err, os.ErrNotExist) {
		t.Error("unlisted credential exposed")
	}
	found := false
	for _, c := range rep.Credentials {
		found = found || (c.Name == "vmm.notify_socket" && c.Verification == "not-in-manifest")
	}
	if !found {
		t.Error("unlisted credential not reported")
	}
}

// TestSystemdCrossCheck: an @system folder holding a copy cut at 4 KiB, as
// systemd 252 leaves it, is named; in systemd mode it fails the load, in
// verified mode only the manifest is affected.
func TestSystemdCrossCheck(t *testing.T) {
	pub, priv := newKey(t)
	big := randomSecret(t, 10*1024)
	for _, mode := range []string{"systemd", "verified"} {
		t.Run(mode, func(t *testing.T) {
			prefix := oemstring.PrefixVmcred
			if mode == "systemd" {
				prefix = oemstring.PrefixBinary
			}
			p := pack(t, packOpts{key: priv, prefix: prefix}, map[string][]byte{"big": big, "small": []byte("s")})
			work := t.TempDir()
			sys := filepath.Join(work, "@system")
			os.Mkdir(sys, 0o700)
			if mode == "systemd" {
				os.WriteFile(filepath.Join(sys, "big"), big[:3982], 0o400)
				os.WriteFile(filepath.Join(sys, "small"), []byte("s"), 0o400)
			}
			store := filepath.Join(shmDir(t), "credstore")
			rep, err := Load(Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, p.strs, 0)}, Credstore: store, StatusDir: filepath.Join(work, "s"), TrustKeys: []ed25519.PublicKey{pub}, SystemCredentials: sys, VM: "test-vm", Now: func() time.Time { return issued }})
			notes := map[string]string{}
			for _, n := range rep.SystemCheck {
				notes[n.Name] = n.Status
			}
			if mode == "systemd" {
				if err == nil || cli.CodeOf(err) != 1 || !strings.Contains(err.Error(), `credential "big": systemd's copy`) || !strings.Contains(err.Error(), "truncated (3982 of 10240 bytes)") {
					t.Fatalf("want a failure naming big as truncated, got %v", err)
				}
				if diff := cmp.Diff(map[string]string{"big": "truncated", "small": "match"}, notes); diff != "" {
					t.Errorf("notes (-want +got)\n%s", diff)
				}
				if len(storeNames(t, store)) != 0 {
					t.Errorf("store written on failure")
				}
				return
			}
			if err != nil {
				t.Fatalf("verified mode: %v", err)
			}
			if diff := cmp.Diff(map[string]string{}, notes); diff != "" {
				t.Errorf("notes (-want +got)\n%s", diff)
			}
			for _, c := range rep.Credentials {
				if c.Served != filepath.Join(store, c.Name) {
					t.Errorf("%s served from %q, want the credstore", c.Name, c.Served)
				}
			}
		})
	}
}
