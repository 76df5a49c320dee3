package channel

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
)

// bootstrapFixture is a fixture in bootstrap mode: tokenless, with a
// manifest file.
func bootstrapFixture(t *testing.T, values map[string][]byte) (*fixture, []byte) {
	t.Helper()
	f := newFixture(t, values)
	st, err := NewState(f.state.VM, f.state.Nonce, credential.Secret{}, f.state.Channel, f.state.IssuedAt, f.state.Credentials)
	if err != nil {
		t.Fatal(err)
	}
	envelope := []byte("signed-manifest-envelope")
	st.Bootstrap, st.ManifestFile = true, filepath.Join(f.dir, "vmcred.manifest.signed")
	if err := os.WriteFile(st.ManifestFile, envelope, 0o400); err != nil {
		t.Fatal(err)
	}
	f.state = st
	return f, envelope
}

func zeroHello() proto.Hello {
	return proto.Hello{Token: credential.NewSecret(make([]byte, proto.TokenSize)), BootID: "boot-1", AgentVersion: "test 1"}
}

func TestBootstrapServesManifestFirst(t *testing.T) {
	f, envelope := bootstrapFixture(t, map[string][]byte{"api-key": randomBytes(t, 32), "db": randomBytes(t, 100)})
	path, ev := serve(t, f, nil)
	creds, ack := fetchAndReport(t, path, zeroHello())
	if ack == "" {
		t.Error("empty ack")
	}
	var names []string
	for _, c := range creds {
		names = append(names, c.Name)
		want := f.values[c.Name]
		if c.Name == ManifestName {
			want = envelope
		}
		if string(c.Value.Reveal()) != string(want) {
			t.Errorf("credential %s: %d bytes, want %d", c.Name, c.Value.Len(), len(want))
		}
	}
	if len(names) != 3 || names[0] != ManifestName {
		t.Errorf("sent %q, want the manifest first and both credentials", names)
	}
	ev.waitFor(t, "report event", func() bool { return len(ev.reports) == 1 && len(ev.fetched) == 1 })

	// Once per pack, as for any boot.
	c := dial(t, path)
	cl := proto.NewClient(c)
	if err := cl.WriteHello(zeroHello()); err != nil {
		t.Fatal(err)
	}
	var re *proto.RemoteError
	if _, err := cl.ReadCredentials(); !errors.As(err, &re) || re.Code != proto.CodeAlreadyFetched {
		t.Errorf("second bootstrap fetch: %v, want already-fetched", err)
	}
}

func TestBootstrapWrongNonce(t *testing.T) {
	f, _ := bootstrapFixture(t, map[string][]byte{"k": randomBytes(t, 16)})
	path, _ := serve(t, f, nil)
	h := zeroHello()
	h.BootNonce[0] = 7
	cl := proto.NewClient(dial(t, path))
	if err := cl.WriteHello(h); err != nil {
		t.Fatal(err)
	}
	var re *proto.RemoteError
	if _, err := cl.ReadCredentials(); !errors.As(err, &re) || re.Code != proto.CodeWrongBoot {
		t.Errorf("a nonce that is neither zero nor the manifest's: %v, want wrong-boot", err)
	}
}

// TestEmptyTokenOutsideBootstrap: with a token in the manifest, the
// all-zero token and zero nonce of bootstrap are refused.
func TestEmptyTokenOutsideBootstrap(t *testing.T) {
	f := newFixture(t, map[string][]byte{"k": randomBytes(t, 16)})
	path, ev := serve(t, f, nil)
	cl := proto.NewClient(dial(t, path))
	if err := cl.WriteHello(zeroHello()); err != nil {
		t.Fatal(err)
	}
	var re *proto.RemoteError
	if _, err := cl.ReadCredentials(); !errors.As(err, &re) || re.Code != proto.CodeBadToken {
		t.Errorf("empty token outside bootstrap: %v, want bad-token", err)
	}
	ev.waitFor(t, "drop event", func() bool { return ev.droppedWith(ErrBadToken) > 0 })
}

func TestBootstrapStateRoundTrip(t *testing.T) {
	f, _ := bootstrapFixture(t, map[string][]byte{"k": randomBytes(t, 16)})
	if err := WriteState(f.dir, f.state); err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Bootstrap || !st.Tokenless || st.ManifestFile != f.state.ManifestFile {
		t.Errorf("read back bootstrap=%v tokenless=%v manifest=%q", st.Bootstrap, st.Tokenless, st.ManifestFile)
	}
	for name, mod := range map[string]func(map[string]any){
		"bootstrap with a token": func(m map[string]any) {
			m["token_sha256"] = "00000000000000000000000000000000000000000000000000000000000000aa"
		},
		"bootstrap without a file": func(m map[string]any) { delete(m, "manifest_file") },
		"a file without bootstrap": func(m map[string]any) { delete(m, "bootstrap") },
	} {
		b, _ := json.Marshal(f.state)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		mod(m)
		b, _ = json.Marshal(m)
		var st State
		if err := json.Unmarshal(b, &st); !errors.Is(err, ErrState) {
			t.Errorf("%s: %v, want ErrState", name, err)
		}
	}
}
