package agent

import (
	"bytes"
	"crypto/rand"

	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// shmDir is a temporary folder on tmpfs, where a credstore is accepted.
func shmDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "vmcred-agent-test-")
	if err != nil {
		t.Skipf("no /dev/shm tmpfs here: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func randomSecret(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeTable lays out strs as QEMU does and writes the table to a file,
// returning the path relative to "/" for Config.Firmware.
func writeTable(t *testing.T, dir string, strs []string, cut int) string {
	t.Helper()
	tab, err := smbios.BuildQEMUTable(strs)
	if err != nil {
		t.Fatal(err)
	}
	if cut > 0 {
		tab = tab[:cut]
	}
	p := filepath.Join(dir, "DMI")
	if err := os.WriteFile(p, tab, 0o600); err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(p, "/")
}

func format(t *testing.T, prefix, name string, v []byte) string {
	t.Helper()
	s, err := oemstring.Format(prefix, name, credential.NewSecret(v))
	if err != nil {
		t.Fatal(err)
	}
	return string(s.Reveal())
}

func TestLoadUnverifiedRoundTrip(t *testing.T) {
	work := t.TempDir()
	store := filepath.Join(shmDir(t), "credstore")
	values := map[string][]byte{"api-key": randomSecret(t, 32), "db-password": randomSecret(t, 24), "big": randomSecret(t, 15000)}
	strs := []string{
		format(t, oemstring.PrefixVmcred, "api-key", values["api-key"]),
		format(t, oemstring.PrefixBinary, "db-password", values["db-password"]),
		format(t, oemstring.PrefixBinary, "big", values["big"]),
		"io.systemd.credential:ENVIRONMENT=test",
		"io.systemd.credential:bad:name=x",
	}
	values["ENVIRONMENT"] = []byte("test")
	cfg := Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, strs, 0)}, Credstore: store, StatusDir: filepath.Join(work, "status"), AllowUnverified: true}
	rep, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if rep.Outcome != OutcomeReady || len(rep.Credentials) != 4 || len(rep.Skipped) != 1 {
		t.Fatalf("outcome %s, %d credentials, %d skipped", rep.Outcome, len(rep.Credentials), len(rep.Skipped))
	}
	st, err := os.Stat(store)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("store mode: %v %v", st.Mode(), err)
	}
	for name, want := range values {
		p := filepath.Join(store, name)
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: content differs (%d bytes, want %d), err %v", name, len(got), len(want), err)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v", name, st.Mode())
		}
	}
	back, err := ReadStatus(cfg.StatusDir)
	if err != nil || back.Outcome != OutcomeReady || len(back.Credentials) != 4 {
		t.Fatalf("status file: %+v %v", back.Outcome, err)
	}
	raw, _ := os.ReadFile(filepath.Join(cfg.StatusDir, StatusFile))
	for name, v := range values {
		if len(v) >= 8 && bytes.Contains(raw, v) {
			t.Errorf("status file holds the value of %s", name)
		}
	}
}

func TestLoadRefusals(t *testing.T) {
	good := []string{"io.systemd.credential:a=1", "io.systemd.credential:b=2"}
	tests := []struct {
		name       string
		strs       []string
		cut        int
		unverified bool
		persistent bool
		code       int
		want       string
	}{
		{name: "no manifest", strs: good, code: cli.ExitFailure, want: "no vmcred.manifest credential"},
		{name: "table truncated", strs: good, cut: 20, unverified: true, code: cli.ExitFailure, want: "source damaged"},
		{name: "persistent store", strs: good, unverified: true, persistent: true, code: cli.ExitFailure, want: "tmpfs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			work := t.TempDir()
			store := filepath.Join(shmDir(t), "credstore")
			if tt.persistent {
				store = filepath.Join(work, "credstore")
			}
			// An earlier good load put content in the store; a refused
			// load must leave it exactly as it was.
			if !tt.persistent {
				prev := Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, t.TempDir(), []string{"io.systemd.credential:old=kept"}, 0)}, Credstore: store, StatusDir: filepath.Join(work, "status"), AllowUnverified: true}
				if _, err := Load(prev); err != nil {
					t.Fatal(err)
				}
			}
			cfg := Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: writeTable(t, work, tt.strs, tt.cut)}, Credstore: store, StatusDir: filepath.Join(work, "status"), AllowUnverified: tt.unverified}
			rep, err := Load(cfg)
			if err == nil {
				t.Fatal("load succeeded")
			}
			if got := cli.CodeOf(err); got != tt.code {
				t.Errorf("exit code %d, want %d (%v)", got, tt.code, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if rep.Outcome != OutcomeFailed {
				t.Errorf("outcome %q", rep.Outcome)
			}
			ents, _ := os.ReadDir(store)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if !tt.persistent && (len(names) != 1 || names[0] != "old") {
				t.Errorf("store holds %v after a refused load, want only the old content", names)
			}
			if tt.persistent && len(names) != 0 {
				t.Errorf("persistent store got %v", names)
			}
			back, err2 := ReadStatus(cfg.StatusDir)
			if err2 != nil || back.Outcome != OutcomeFailed {
				t.Errorf("status file not updated with the failure: %v", err2)
			}
		})
	}
}
