package emit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/host/internal/goldenfile"
	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldenfile.Check(t, *update, name, got)
}

type fixtureCred struct {
	name   string
	value  string
	secret bool
}

// fixture is a fixed set of credentials, with a manifest signed by a fixed
// key over a fixed nonce and time, so every output is stable.
func fixture(t *testing.T) ([]fixtureCred, ManifestParams) {
	t.Helper()
	seed := sha256.Sum256([]byte("vmcred emit golden key"))
	return []fixtureCred{
			{"api-key", "api-key-value-0123456789abcdef", true},
			{"db-password", "correct horse battery staple", true},
			{"ENVIRONMENT", "test", false},
		}, ManifestParams{
			VM: "test-vm", IssuedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
			Key: ed25519.NewKeyFromSeed(seed[:]),
		}
}

// planFor plans the fixture for opts and returns the plan and values,
// manifest included.
func planFor(t *testing.T, creds []fixtureCred, params ManifestParams, opts plan.Options) (*plan.Plan, Values) {
	t.Helper()
	vals := Values{}
	var inputs []plan.Input
	var mc []ManifestCredential
	for _, c := range creds {
		v := credential.NewSecret([]byte(c.value))
		vals[c.name] = v
		inputs = append(inputs, plan.Input{Name: c.name, Size: v.Len(), Secret: c.secret})
		mc = append(mc, ManifestCredential{Name: c.name, Value: v, Secret: c.secret})
	}
	draft, err := BuildManifest(params, mc, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts.Extra = []plan.Input{{Name: plan.ManifestName, Size: draft.Len(), Secret: true}}
	if opts.SMBIOSReserve == 0 {
		opts.SMBIOSReserve = -1
	}
	p, err := plan.New(inputs, opts)
	if err != nil {
		t.Fatal(err)
	}
	m, err := BuildManifest(params, mc, Deliveries(p))
	if err != nil {
		t.Fatal(err)
	}
	if m.Len() != draft.Len() {
		t.Fatalf("manifest length %d, draft %d", m.Len(), draft.Len())
	}
	vals[plan.ManifestName] = m
	return p, vals
}

func TestGoldenCHAPIBody(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.CloudHypervisor, CHAPI: true})
	base := []byte(`{"payload":{"kernel":"/nix/store/k/bzImage","cmdline":"console=ttyS0"},"memory":{"size":536870912},"platform":{"num_pci_segments":1,"oem_strings":["io.systemd.credential:tag=static"]}}`)
	r, err := Build(p, vals, Options{RuntimeDir: "/run/vmcred/test-vm", CHAPISocket: "/run/vmcred/test-vm/api.sock", CHConfig: base})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{}, r.Args); diff != "" {
		t.Errorf("with the API, nothing goes on the command line (-want +got):\n%s", diff)
	}
	body := r.APIBody().Reveal()
	var cfg struct {
		Payload  map[string]any `json:"payload"`
		Platform struct {
			Segments   int      `json:"num_pci_segments"`
			OEMStrings []string `json:"oem_strings"`
		} `json:"platform"`
	}
	if err := json.Unmarshal(body, &cfg); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if cfg.Platform.Segments != 1 || cfg.Payload["kernel"] != "/nix/store/k/bzImage" || len(cfg.Platform.OEMStrings) != 5 || cfg.Platform.OEMStrings[0] != "io.systemd.credential:tag=static" {
		t.Errorf("base config not kept: %+v", cfg)
	}
	golden(t, "cloud-hypervisor-vm-create.json", append(append([]byte(nil), body...), '\n'))
	want := &APIRequest{Socket: "/run/vmcred/test-vm/api.sock", BodyFile: "/run/vmcred/test-vm/ch-vm-create.json", Calls: []string{"PUT /api/v1/vm.create", "PUT /api/v1/vm.boot"}}
	if diff := cmp.Diff(want, r.API); diff != "" {
		t.Errorf("API (-want +got):\n%s", diff)
	}

	// Without a base config the body is the platform fragment alone.
	r, err = Build(p, vals, Options{RuntimeDir: "/run/vmcred/test-vm", CHAPISocket: "/s"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(r.APIBody().Reveal(), []byte(`{"platform":{"oem_strings":["io.vmcred.credential.binary:api-key=`)) {
		t.Errorf("fragment body starts %q", r.APIBody().Reveal()[:60])
	}
}

func TestCHCreateRequestErrors(t *testing.T) {
	for _, base := range []string{`[1]`, `{"platform":3}`, `{"platform":{"oem_strings":"x"}}`, `{`, `{"x":"@vmcred-oem-strings@"}`} {
		_, err := CHCreateRequest([]byte(base), []credential.Secret{credential.NewSecret([]byte("s"))})
		if !errors.Is(err, ErrOption) {
			t.Errorf("base %s: err = %v, want ErrOption", base, err)
		}
	}
	got, err := CHCreateRequest([]byte(`{"platform":null}`), []credential.Secret{credential.NewSecret([]byte("a\"b\\c\x01"))})
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Platform struct {
			OEMStrings []string `json:"oem_strings"`
		}
	}
	if err := json.Unmarshal(got.Reveal(), &v); err != nil || len(v.Platform.OEMStrings) != 1 || v.Platform.OEMStrings[0] != "a\"b\\c\x01" {
		t.Errorf("escaping: %s, %v", got.Reveal(), err)
	}
}

func TestGoldenDMITable(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.DMI, Mode: plan.Systemd})
	out := filepath.Join(t.TempDir(), "table.dmi")
	r, err := Build(p, vals, Options{Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Write(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(out)
	if fi.Mode().Perm() != 0o400 {
		t.Errorf("table mode %04o, want 0400", fi.Mode().Perm())
	}
	if len(b) != p.Usage.SMBIOSTable {
		t.Errorf("table is %d bytes, plan says %d", len(b), p.Usage.SMBIOSTable)
	}
	strs, err := smbios.ReadTableOEMStrings(b)
	if err != nil || len(strs) != 1 || len(strs[0]) != 4 {
		t.Fatalf("read back: %v %v", strs, err)
	}
	// The strings parse back with systemd's rules to the values.
	ps := oemstring.NewParser()
	ps.AddStrings("smbios", strs[0])
	res := ps.Result()
	if len(res.Entries) != 4 || len(res.Skipped) != 0 {
		t.Fatalf("parsed %d, skipped %v", len(res.Entries), res.Skipped)
	}
	for _, e := range res.Entries {
		if !e.Value.Equal(vals[e.Name]) {
			t.Errorf("%s: value differs", e.Name)
		}
	}
	golden(t, "test-vm.dmi.hex", []byte(hex.Dump(b)))
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); err != nil {
		t.Errorf("Remove must leave the DMI table (the output): %v", err)
	}
}

func TestWrite(t *testing.T) {
	creds, params := fixture(t)
	for _, hv := range []plan.Hypervisor{plan.QEMU, plan.QEMUMicrovm} {
		t.Run(string(hv), func(t *testing.T) {
			p, vals := planFor(t, creds, params, plan.Options{Hypervisor: hv})
			dir := filepath.Join(t.TempDir(), "run,dir")
			r, err := Build(p, vals, Options{RuntimeDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Build touched the disk: %v", err)
			}
			if err := r.Write(); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(dir)
			if err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("runtime dir: %v %v", fi.Mode(), err)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != len(r.Files) || len(r.Files) != 4 {
				t.Fatalf("%d entries, %d files", len(entries), len(r.Files))
			}
			for i, f := range r.Files {
				fi, err := os.Lstat(f.Path)
				if err != nil || fi.Mode() != 0o400 {
					t.Fatalf("%s: %v %v", f.Path, fi.Mode(), err)
				}
				b, _ := os.ReadFile(f.Path)
				want := vals[f.Name].Reveal()
				if f.Role == RoleSMBIOS {
					want = []byte(r.Plan.Items[i].Prefix + f.Name + "=" + b64(vals[f.Name]))
				}
				if !bytes.Equal(b, want) {
					t.Errorf("%s holds %q, want %q", f.Path, b, want)
				}
				if bytes.HasSuffix(b, []byte("\n")) && f.Role == RoleSMBIOS {
					t.Errorf("%s ends with a newline", f.Path)
				}
				// The argument names the file with ',' doubled.
				if !strings.Contains(strings.Join(r.Args, " "), EscapeComma(f.Path)) || !strings.Contains(EscapeComma(f.Path), ",,") {
					t.Errorf("arguments %q do not name %s escaped", r.Args, f.Path)
				}
			}
			// A second Write (a restart) replaces the files.
			if err := r.Write(); err != nil {
				t.Fatalf("second write: %v", err)
			}
			if err := r.Remove(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); err == nil {
				// The second Write found the directory, so only files go.
				entries, _ := os.ReadDir(dir)
				if len(entries) != 0 {
					t.Errorf("left %v", entries)
				}
			}
		})
	}
}

func b64(s credential.Secret) string {
	v, _ := oemstring.Format(oemstring.PrefixBinary, "x", s)
	return strings.TrimPrefix(string(v.Reveal()), oemstring.PrefixBinary+"x=")
}

func TestWriteAllOrNothing(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.QEMU})
	dir := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A directory where the third payload file goes makes its rename fail.
	if err := os.Mkdir(filepath.Join(dir, "oem-002"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "oem-002", "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Build(p, vals, Options{RuntimeDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Write()
	if err == nil || !strings.Contains(err.Error(), "oem-002") {
		t.Fatalf("Write = %v, want an error naming oem-002", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "oem-002" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("left behind %v", names)
	}
}

func TestWriteRefusesUnsafeDir(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.QEMU})
	tmp := t.TempDir()
	open := filepath.Join(tmp, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(tmp, "link")
	if err := os.Symlink(open, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{open, link, file} {
		r, err := Build(p, vals, Options{RuntimeDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Write(); !errors.Is(err, ErrUnsafeDir) {
			t.Errorf("%s: Write = %v, want ErrUnsafeDir", dir, err)
		}
	}
	if entries, _ := os.ReadDir(open); len(entries) != 0 {
		t.Errorf("wrote into the unsafe directory: %v", entries)
	}
	for _, dir := range []string{"", "relative/dir", "/a/../b"} {
		if _, err := Build(p, vals, Options{RuntimeDir: dir}); !errors.Is(err, ErrOption) {
			t.Errorf("runtime dir %q: err = %v, want ErrOption", dir, err)
		}
	}
}

func TestDMIWriteFailsCleanly(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.DMI})
	tmp := t.TempDir()
	for _, out := range []string{filepath.Join(tmp, "missing-dir", "t.dmi"), tmp} {
		r, err := Build(p, vals, Options{Out: out})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Write(); err == nil {
			t.Errorf("%s: Write succeeded", out)
		}
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("left %v", entries)
	}
	if _, err := Build(p, vals, Options{}); !errors.Is(err, ErrOption) {
		t.Errorf("dmi without --out: %v", err)
	}
}

func TestBuildChecksValues(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.QEMU})
	short := Values{}
	for k, v := range vals {
		short[k] = v
	}
	delete(short, "api-key")
	if _, err := Build(p, short, Options{RuntimeDir: "/r"}); !errors.Is(err, ErrValue) || !strings.Contains(err.Error(), `"api-key"`) {
		t.Errorf("missing value: %v", err)
	}
	short["api-key"] = credential.NewSecret([]byte("other length"))
	if _, err := Build(p, short, Options{RuntimeDir: "/r"}); !errors.Is(err, ErrValue) || strings.Contains(err.Error(), "other length") {
		t.Errorf("changed value: %v", err)
	}
}

func TestBuildRefusesBadHandMadePlans(t *testing.T) {
	v := Values{"k": credential.NewSecret([]byte("v")), strings.Repeat("n", 29): credential.NewSecret([]byte("v"))}
	tests := []struct {
		name string
		p    *plan.Plan
	}{
		{"secret on cloud-hypervisor's command line", &plan.Plan{Hypervisor: plan.CloudHypervisor, Items: []plan.Item{
			{Name: "k", Size: 1, Secret: true, Delivery: plan.DeliverySMBIOS, Carrier: plan.CarrierArgv, Prefix: oemstring.PrefixVmcred}}}},
		{"fw_cfg name over 28", &plan.Plan{Hypervisor: plan.QEMUMicrovm, Items: []plan.Item{
			{Name: strings.Repeat("n", 29), Size: 1, Secret: true, Delivery: plan.DeliveryFwCfg, Carrier: plan.CarrierFile}}}},
		{"api without a socket", &plan.Plan{Hypervisor: plan.CloudHypervisor, Items: []plan.Item{
			{Name: "k", Size: 1, Secret: true, Delivery: plan.DeliverySMBIOS, Carrier: plan.CarrierAPI, Prefix: oemstring.PrefixVmcred}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Build(tt.p, v, Options{RuntimeDir: "/r"})
			if err == nil {
				t.Fatalf("Build = %q", r.Args)
			}
		})
	}
}

func TestWriteArgs(t *testing.T) {
	var b bytes.Buffer
	if err := WriteArgs(&b, []string{"-smbios", "type=11,path=/a b"}, false); err != nil || b.String() != "-smbios\ntype=11,path=/a b\n" {
		t.Errorf("lines: %q %v", b.String(), err)
	}
	b.Reset()
	if err := WriteArgs(&b, []string{"a\nb", "c"}, true); err != nil || b.String() != "a\nb\x00c\x00" {
		t.Errorf("print0: %q %v", b.String(), err)
	}
	b.Reset()
	if err := WriteArgs(&b, []string{"ok", "a\nb"}, false); err == nil || !strings.Contains(err.Error(), "--print0") || b.Len() != 0 {
		t.Errorf("newline in line mode: %q %v", b.String(), err)
	}
	if got := EscapeComma("a,b,,c"); got != "a,,b,,,,c" {
		t.Errorf("EscapeComma = %q", got)
	}
}

func TestDocumentRefusesInlineSecrets(t *testing.T) {
	creds, params := fixture(t)
	p, vals := planFor(t, creds, params, plan.Options{Hypervisor: plan.QEMU, InlineSecrets: true})
	r, err := Build(p, vals, Options{RuntimeDir: "/r"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewDocument(r); !errors.Is(err, ErrOption) {
		t.Errorf("NewDocument = %v, want ErrOption", err)
	}
}

// TestFwCfgPayloadIsTheValue checks that the fw_cfg payload is the
// caller's value, not a copy: a copy passes through vector registers that
// a signal can save where no Wipe reaches (issue 17, finding 6).
func TestFwCfgPayloadIsTheValue(t *testing.T) {
	b := bytes.Repeat([]byte{7}, 5000)
	p := &plan.Plan{Hypervisor: plan.QEMU, Items: []plan.Item{
		{Name: "big", Size: len(b), Secret: true, Delivery: plan.DeliveryFwCfg, Carrier: plan.CarrierFile}}}
	r, err := Build(p, Values{"big": credential.NewSecret(b)}, Options{RuntimeDir: "/r"})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.payloads) != 1 || &r.payloads[0].Reveal()[0] != &b[0] {
		t.Fatal("the fw_cfg payload is a copy of the value")
	}
	r.Wipe()
	if !bytes.Equal(b, make([]byte, len(b))) {
		t.Error("Wipe left the value")
	}
}
