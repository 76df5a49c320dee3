package agent

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/firmware"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// bootstrapHost is a host serving a pack made with --manifest-by-channel:
// a signed manifest with the channel address and no token, listing vals
// as channel credentials, served with them to the all-zero token. served
// replaces what is served (nil: vals as listed).
func bootstrapHost(t *testing.T, key ed25519.PrivateKey, vm string, vals, served map[string][]byte) (h *fakeHost, envelope []byte) {
	t.Helper()
	h = &fakeHost{path: filepath.Join(t.TempDir(), "fc.sock"), bootstrap: true}
	b := manifest.NewBuilder(vm, [manifest.NonceSize]byte{}, issued)
	b.SetNotAfter(issued.Add(24 * time.Hour))
	b.SetChannel("unix:"+h.path, credential.Secret{})
	for n, v := range vals {
		if err := b.Add(n, credential.NewSecret(v), manifest.DeliveryChannel, false); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if envelope, err = b.Envelope(key); err != nil {
		t.Fatal(err)
	}
	if served == nil {
		served = vals
	}
	h.serve = append(h.serve, proto.Credential{Name: ManifestName, Value: credential.NewSecret(envelope)})
	for n, v := range served {
		h.serve = append(h.serve, proto.Credential{Name: n, Value: credential.NewSecret(v)})
	}
	h.listen(t)
	return h, envelope
}

// bootstrapConfig is a Firecracker guest: no firmware source at all, the
// channel given with --channel, the host's key trusted.
func bootstrapConfig(t *testing.T, pub ed25519.PublicKey, h *fakeHost) Config {
	t.Helper()
	work := t.TempDir()
	return Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: strings.TrimPrefix(filepath.Join(work, "no-DMI"), "/")},
		Credstore: filepath.Join(shmDir(t), "credstore"), StatusDir: filepath.Join(work, "status"),
		TrustKeys: []ed25519.PublicKey{pub}, VM: "test-vm", Channel: "unix:" + h.path,
		Now: func() time.Time { return issued }, Timeout: 3 * time.Second, Version: "test"}
}

// statusFiles lists the status folder, temporary files included.
func statusFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestBootstrapSavesManifest: a bootstrap load keeps the exact signed
// manifest it accepted, 0600, next to status.json, which says it came by
// channel. A later firmware load in the same status folder removes it.
func TestBootstrapSavesManifest(t *testing.T) {
	pub, priv := newKey(t)
	vals := map[string][]byte{"api-key": randomSecret(t, 32), "tls.key": randomSecret(t, 3000)}
	h, envelope := bootstrapHost(t, priv, "test-vm", vals, nil)
	cfg := bootstrapConfig(t, pub, h)
	rep, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if rep.ManifestSource != ManifestFromChannel || rep.Policy != PolicySignature {
		t.Errorf("manifest source %q, policy %q; want channel, signature", rep.ManifestSource, rep.Policy)
	}
	path := filepath.Join(cfg.StatusDir, ManifestFile)
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, envelope) {
		t.Fatalf("%s: %d bytes, want the %d signed bytes the host sent (%v)", path, len(got), len(envelope), err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600 (%v)", path, fi.Mode().Perm(), err)
	}
	if names := statusFiles(t, cfg.StatusDir); !slices.Equal(names, []string{"credstore.state", ManifestFile, StatusFile}) {
		t.Errorf("status folder holds %v", names)
	}
	for n, v := range vals {
		if bytes.Contains(got, v[:16]) {
			t.Errorf("the saved manifest holds the value of %s", n)
		}
	}

	// A firmware load into the same folders: the copy would describe
	// another manifest than the one the credstore was written against.
	p := packWithChannel(t, priv, "", map[string][]byte{"a": randomSecret(t, 8)}, nil)
	fwCfg := channelConfig(t, pub, p.strs)
	fwCfg.Credstore, fwCfg.StatusDir = cfg.Credstore, cfg.StatusDir
	rep, err = Load(fwCfg)
	if err != nil || rep.ManifestSource != ManifestFromFirmware {
		t.Fatalf("firmware load: %v, manifest source %q", err, rep.ManifestSource)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("after a firmware load %s is still there (%v)", path, err)
	}
}

// TestFirmwareManifestNotSaved: a firmware manifest, which may carry the
// channel token, is never copied to the status folder.
func TestFirmwareManifestNotSaved(t *testing.T) {
	pub, priv := newKey(t)
	host := startHost(t, map[string][]byte{"c": randomSecret(t, 10)})
	p := packWithChannel(t, priv, "unix:"+host.path, map[string][]byte{"a": randomSecret(t, 8)}, host.values())
	cfg := channelConfig(t, pub, p.strs)
	if _, err := Load(cfg); err != nil {
		t.Fatal(err)
	}
	if names := statusFiles(t, cfg.StatusDir); slices.Contains(names, ManifestFile) {
		t.Errorf("status folder holds %v after a firmware load", names)
	}
}

// TestBootstrapFailedLoadSavesNothing: a bootstrap load that fails
// verification writes no manifest file, partial or whole, and leaves the
// copy an earlier load saved as it was.
func TestBootstrapFailedLoadSavesNothing(t *testing.T) {
	pub, priv := newKey(t)
	v := randomSecret(t, 40)
	tests := []struct {
		name   string
		vm     string
		served map[string][]byte
		want   string // in the error
	}{
		{"a value the manifest does not list", "test-vm", map[string][]byte{"k": append([]byte{v[0] ^ 1}, v[1:]...)}, `credential "k"`},
		{"issued for another vm", "other-vm", nil, "other-vm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, earlier := range []bool{false, true} {
				h, _ := bootstrapHost(t, priv, tc.vm, map[string][]byte{"k": v}, tc.served)
				cfg := bootstrapConfig(t, pub, h)
				var before []byte
				if earlier {
					before = []byte("an earlier load's copy")
					if err := os.MkdirAll(cfg.StatusDir, 0o700); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(cfg.StatusDir, ManifestFile), before, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				_, err := Load(cfg)
				if cli.CodeOf(err) != cli.ExitFailure || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v (exit %d), want exit 1 naming %s", err, cli.CodeOf(err), tc.want)
				}
				got, rerr := os.ReadFile(filepath.Join(cfg.StatusDir, ManifestFile))
				switch {
				case !earlier && !os.IsNotExist(rerr):
					t.Errorf("a failed load left a manifest file (%d bytes, %v)", len(got), rerr)
				case earlier && !bytes.Equal(got, before):
					t.Errorf("a failed load changed the earlier copy (%v)", rerr)
				}
				if names := statusFiles(t, cfg.StatusDir); slices.Contains(names, "."+ManifestFile+".tmp") {
					t.Errorf("status folder holds %v", names)
				}
				if names := storeNames(t, cfg.Credstore); len(names) != 0 {
					t.Errorf("credstore holds %v after a failed load", names)
				}
			}
		})
	}
}

// TestBootstrapSaveFails: when the copy cannot be written (a folder is in
// its way), the load fails with exit 3 naming the file, before the
// credstore is written, and leaves no temporary file.
func TestBootstrapSaveFails(t *testing.T) {
	pub, priv := newKey(t)
	h, _ := bootstrapHost(t, priv, "test-vm", map[string][]byte{"k": randomSecret(t, 40)}, nil)
	cfg := bootstrapConfig(t, pub, h)
	path := filepath.Join(cfg.StatusDir, ManifestFile)
	if err := os.MkdirAll(filepath.Join(path, "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	rep, err := Load(cfg)
	if cli.CodeOf(err) != cli.ExitIO || !strings.Contains(err.Error(), path) {
		t.Fatalf("got %v (exit %d), want exit 3 naming %s", err, cli.CodeOf(err), path)
	}
	if rep.Outcome != OutcomeFailed {
		t.Errorf("outcome %q", rep.Outcome)
	}
	if names := statusFiles(t, cfg.StatusDir); slices.Contains(names, "."+ManifestFile+".tmp") {
		t.Errorf("status folder holds %v", names)
	}
	if names := storeNames(t, cfg.Credstore); len(names) != 0 {
		t.Errorf("credstore holds %v after a failed load", names)
	}
	if r := h.lastReport(t); r.Outcome != proto.OutcomeFailed {
		t.Errorf("host got %v", r.Outcome)
	}
}
