package channel

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/credential"
)

func TestStateRoundTrip(t *testing.T) {
	f := newFixture(t, map[string][]byte{"a": randomBytes(t, 10), "b": randomBytes(t, 20)})
	static := "plain text"
	f.state.Credentials = append(f.state.Credentials, StateCredential{Name: "s", Size: int64(len(static)), SHA256: credential.NewSecret([]byte(static)).SHA256(), Static: &static})
	dir := t.TempDir()
	if err := WriteState(dir, f.state); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, StateFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, err %v; want 0600", fi.Mode(), err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, StateFile))
	if strings.Contains(string(raw), canaryToken) {
		t.Error("the state file holds the token")
	}
	for name, v := range f.values {
		if strings.Contains(string(raw), string(v)) {
			t.Errorf("the state file holds the value of %s", name)
		}
	}
	got, err := ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f.state, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if !got.CheckToken(credential.NewSecret([]byte(canaryToken))) || got.CheckToken(credential.NewSecret([]byte(strings.Repeat("y", 32)))) {
		t.Error("CheckToken disagrees with the token")
	}
	creds, err := got.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 3 || string(creds[2].Value.Reveal()) != static {
		t.Errorf("loaded %d credentials", len(creds))
	}
}

func TestStateRefused(t *testing.T) {
	good := func() map[string]any {
		return map[string]any{"version": 1, "vm": "vm", "nonce": strings.Repeat("00", 16), "channel": "unix:/x", "issued_at": time.Unix(1, 0),
			"credentials": []map[string]any{{"name": "a", "size": 0, "sha256": strings.Repeat("00", 32), "file": "/abs"}}}
	}
	tests := []struct {
		name string
		mod  func(m map[string]any)
		want string
	}{
		{"version", func(m map[string]any) { m["version"] = 2 }, "version 2"},
		{"unknown field", func(m map[string]any) { m["token"] = "x" }, "unknown field"},
		{"short nonce", func(m map[string]any) { m["nonce"] = "00" }, "nonce"},
		{"relative source", func(m map[string]any) {
			m["credentials"] = []map[string]any{{"name": "a", "size": 0, "sha256": strings.Repeat("00", 32), "file": "rel"}}
		}, "not an absolute path"},
		{"no source", func(m map[string]any) {
			m["credentials"] = []map[string]any{{"name": "a", "size": 0, "sha256": strings.Repeat("00", 32)}}
		}, "exactly one of file and static"},
		{"bad vm", func(m map[string]any) { m["vm"] = "a/b" }, "vm"},
		{"no channel", func(m map[string]any) { m["channel"] = "" }, "no channel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good()
			tt.mod(m)
			b, _ := json.Marshal(m)
			var st State
			err := json.Unmarshal(b, &st)
			if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrState mentioning %q", err, tt.want)
			}
		})
	}
}

func TestLoadRefusesChangedSources(t *testing.T) {
	for _, tt := range []struct {
		name    string
		replace []byte
		fifo    bool
		want    error
	}{
		{name: "grew", replace: []byte("value-0123456789"), want: ErrChanged},
		{name: "shrank", replace: []byte("v"), want: ErrChanged},
		{name: "same size, other bytes", replace: []byte("VALUE-0123"), want: ErrChanged},
		{name: "fifo", fifo: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, map[string][]byte{"k": []byte("value-0123")})
			p := f.state.Credentials[0].File
			os.Remove(p)
			if tt.fifo {
				if err := mkfifo(p); err != nil {
					t.Skip(err)
				}
			} else if err := os.WriteFile(p, tt.replace, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := f.state.Load(context.Background())
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), `"k"`) || !strings.Contains(err.Error(), p) || strings.Contains(err.Error(), "value-") || strings.Contains(err.Error(), "VALUE-") {
				t.Errorf("error %q: want the name and path, no value", err)
			}
		})
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.vsock_1234")
	a := address.Address{Kind: address.Unix, Path: path}
	l, err := Listen(a)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, err %v; want a 0600 socket", fi.Mode(), err)
	}
	if _, err := Listen(a); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("second Listen: %v, want a refusal", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("folder holds %d entries, want only the socket", len(ents))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}

	// A stale socket (its server was killed) is replaced.
	stale, err := Listen(a)
	if err != nil {
		t.Fatal(err)
	}
	stale.Listener.(*unixListener).UnixListener.Close()
	l, err = Listen(a)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l.Close()

	// Anything else is left alone.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(a); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
}

// TestListenUnixErrorNamesThePath: a bind that fails names the path asked
// for, never the temporary name it binds first.
func TestListenUnixErrorNamesThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "vm.vsock_1234")
	_, err := Listen(address.Address{Kind: address.Unix, Path: path})
	if err == nil {
		t.Fatal("Listen in a missing folder succeeded")
	}
	if !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), ".vmcred-") {
		t.Errorf("error %q: want %s and no temporary name", err, path)
	}
}
