package push

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

func creds(kv ...string) []Credential {
	var out []Credential
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, Credential{Name: kv[i], Value: credential.NewSecret([]byte(kv[i+1]))})
	}
	return out
}

// TestRecordRoundTrip: a record is written 0600 in a 0700 folder, holds
// names, sizes and keyed MACs (never a value or its plain digest), reads
// back, and Compare says what changed by name and size.
func TestRecordRoundTrip(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	mk := RecordKey(key)
	dir := filepath.Join(t.TempDir(), "pushed")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := WriteRecord(dir, NewRecord("vm1", 7, at, creds("API_KEY", "hunter2", "DB", "s3cret", "OLD", "x"), mk)); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, RecordPath(dir, "vm1"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %04o", path, fi.Mode().Perm(), err, want)
		}
	}
	b, _ := os.ReadFile(RecordPath(dir, "vm1"))
	for _, secret := range []string{"hunter2", "s3cret", "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("the record holds %q (a value or its SHA-256)", secret)
		}
	}
	r, err := ReadRecord(dir, "vm1")
	if err != nil || r == nil || r.Generation != 7 || len(r.Entries) != 3 {
		t.Fatalf("ReadRecord = %+v, %v", r, err)
	}
	d := Compare(r, creds("API_KEY", "hunter3", "DB", "s3cret", "NEW", "12345"), mk)
	if len(d.Changed) != 1 || d.Changed[0] != (Sized{Name: "API_KEY", Size: 7, Was: 7}) ||
		len(d.Added) != 1 || d.Added[0].Name != "NEW" || len(d.Removed) != 1 || d.Removed[0].Name != "OLD" ||
		len(d.Unchanged) != 1 || d.Unchanged[0] != "DB" {
		t.Errorf("Compare = %+v", d)
	}
	// Another signing key cannot tell: every credential looks changed.
	_, other, _ := ed25519.GenerateKey(nil)
	if d := Compare(r, creds("DB", "s3cret"), RecordKey(other)); len(d.Changed) != 1 {
		t.Errorf("Compare under another key = %+v", d)
	}
	// No record: everything is new.
	if d := Compare(nil, creds("A", "1"), mk); len(d.Added) != 1 || d.Empty() {
		t.Errorf("Compare(nil) = %+v", d)
	}
}

// TestRecordLost: a missing folder or file is no record, not an error (the
// next push starts above the agent's generation).
func TestRecordLost(t *testing.T) {
	for _, dir := range []string{filepath.Join(t.TempDir(), "gone"), t.TempDir()} {
		if err := os.Chmod(dir, 0o700); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		r, err := ReadRecord(dir, "vm1")
		if r != nil || err != nil {
			t.Errorf("ReadRecord(%s) = %v, %v; want no record", dir, r, err)
		}
	}
}

// TestRecordUnsafe (attacker: another host user): a state folder or record
// others may reach, a symlinked folder, a record that is not a regular
// file, and a record for another VM are refused, naming the path.
func TestRecordUnsafe(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	good := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "pushed")
		if err := WriteRecord(dir, NewRecord("vm1", 1, time.Now(), creds("A", "1"), RecordKey(key))); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	cases := map[string]func(t *testing.T) string{
		"folder 0755": func(t *testing.T) string { d := good(t); os.Chmod(d, 0o755); return d },
		"folder 0770": func(t *testing.T) string { d := good(t); os.Chmod(d, 0o770); return d },
		"record 0644": func(t *testing.T) string { d := good(t); os.Chmod(RecordPath(d, "vm1"), 0o644); return d },
		"symlinked folder": func(t *testing.T) string {
			d := good(t)
			l := filepath.Join(t.TempDir(), "link")
			os.Symlink(d, l)
			return l
		},
		"record is a folder": func(t *testing.T) string {
			d := good(t)
			os.Remove(RecordPath(d, "vm1"))
			os.Mkdir(RecordPath(d, "vm1"), 0o700)
			return d
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			dir := mk(t)
			if _, err := ReadRecord(dir, "vm1"); err == nil {
				t.Fatal("ReadRecord accepted it")
			}
		})
	}
	dir := good(t)
	os.Rename(RecordPath(dir, "vm1"), RecordPath(dir, "vm2"))
	if _, err := ReadRecord(dir, "vm2"); err == nil || !strings.Contains(err.Error(), `for vm "vm1"`) {
		t.Errorf("a record for another VM: %v", err)
	}
	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o755)
	if err := WriteRecord(open, NewRecord("vm1", 1, time.Now(), nil, RecordKey(key))); !errors.Is(err, ErrStateUnsafe) {
		t.Errorf("WriteRecord into a 0755 folder: %v", err)
	}
	if _, err := os.Stat(RecordPath(open, "vm1")); err == nil {
		t.Error("WriteRecord wrote into a 0755 folder")
	}
}
