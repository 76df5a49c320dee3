package source

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/credential"
)

// got is a Credential as tests compare it: the value only as its length and
// a SHA-256 prefix, so a failing test never prints a value.
type got struct {
	Name   string
	Secret bool
	Origin Origin
	Len    int
	SHA    string
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:4])
}

func view(creds []Credential) []got {
	var out []got
	for _, c := range creds {
		out = append(out, got{Name: c.Name, Secret: c.Secret, Origin: c.Origin, Len: c.Value.Len(), SHA: digest(c.Value.Reveal())})
	}
	return out
}

func want(name string, secret bool, o Origin, value string) got {
	return got{Name: name, Secret: secret, Origin: o, Len: len(value), SHA: digest([]byte(value))}
}

func writeFile(t *testing.T, path, data string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o400); err != nil {
		t.Fatal(err)
	}
	return path
}

func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		testenv.SkipOrFail(t, "mkfifo %s: %v (this filesystem has no FIFOs; set TMPDIR to one that has)", path, err)
	}
}

func envWith(dir string) Env {
	return Env{
		Getenv: func(k string) string {
			if k == "CREDENTIALS_DIRECTORY" {
				return dir
			}
			return ""
		},
		User: func() string { return "tester (uid 1000)" },
	}
}

// withTimeout fails the test instead of hanging if fn blocks (on a FIFO).
func withTimeout(t *testing.T, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("blocked for 10s: a FIFO was opened for reading")
	}
}

// clanDir builds a clan vars generator folder with one of each kind of
// entry and returns it with the paths of interest.
func clanDir(t *testing.T) (dir, target string) {
	t.Helper()
	root := t.TempDir()
	dir = filepath.Join(root, "vars", "per-machine", "host", "test-vm-secrets")
	writeFile(t, filepath.Join(dir, "api-key"), "api-value")
	writeFile(t, filepath.Join(dir, "db-password"), "db-value")
	writeFile(t, filepath.Join(dir, ".api-key.swp"), "swap")
	writeFile(t, filepath.Join(dir, "bad:name"), "x")
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "subdir", "inner"), "inner")
	mkfifo(t, filepath.Join(dir, "fifo"))
	target = writeFile(t, filepath.Join(root, "secrets.d", "1", "jwt"), "jwt-value")
	if err := os.Symlink(target, filepath.Join(dir, "jwt-secret")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "subdir"), filepath.Join(dir, "link-to-dir")); err != nil {
		t.Fatal(err)
	}
	return dir, target
}

func TestCollect(t *testing.T) {
	dir, target := clanDir(t)
	// On some systems TempDir itself is under a symlink (macOS /var).
	target, _ = filepath.EvalSymlinks(target)
	subdir, _ := filepath.EvalSymlinks(filepath.Join(dir, "subdir"))
	single := writeFile(t, filepath.Join(t.TempDir(), "single"), "single-value")
	empty := writeFile(t, filepath.Join(t.TempDir(), "empty"), "")
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(single, link); err != nil {
		t.Fatal(err)
	}
	singleReal, _ := filepath.EvalSymlinks(single)
	credsDir := t.TempDir()
	writeFile(t, filepath.Join(credsDir, "api-key"), "from-systemd")
	writeFile(t, filepath.Join(credsDir, "db"), "db-from-systemd")

	tests := []struct {
		name     string
		specs    []Spec
		env      Env
		want     []got
		warnings []Warning
	}{
		{
			name:  "file",
			specs: []Spec{{Kind: File, Name: "single", Path: single}},
			want:  []got{want("single", true, Origin{Kind: File, Path: single}, "single-value")},
		},
		{
			name:  "empty file",
			specs: []Spec{{Kind: File, Name: "empty", Path: empty}},
			want:  []got{want("empty", true, Origin{Kind: File, Path: empty}, "")},
		},
		{
			name:  "file through a symlink (sops-nix)",
			specs: []Spec{{Kind: File, Name: "s", Path: link}},
			want:  []got{want("s", true, Origin{Kind: File, Path: link, Target: singleReal}, "single-value")},
		},
		{
			name:  "clan vars directory",
			specs: []Spec{{Kind: Dir, Path: dir}},
			want: []got{
				want("api-key", true, Origin{Kind: Dir, Path: filepath.Join(dir, "api-key"), Dir: dir}, "api-value"),
				want("db-password", true, Origin{Kind: Dir, Path: filepath.Join(dir, "db-password"), Dir: dir}, "db-value"),
				want("jwt-secret", true, Origin{Kind: Dir, Path: filepath.Join(dir, "jwt-secret"), Dir: dir, Target: target}, "jwt-value"),
			},
			warnings: []Warning{
				{Path: filepath.Join(dir, ".api-key.swp"), Reason: "hidden file, skipped (name it with --cred .api-key.swp=file:PATH to read it)"},
				{Path: filepath.Join(dir, "bad:name"), Reason: `not a valid credential name, skipped: credential name "bad:name": contains ':'`},
				{Path: filepath.Join(dir, "fifo"), Reason: "named pipe (FIFO), skipped without opening it (only regular files are credentials)"},
				{Path: filepath.Join(dir, "jwt-secret"), Name: "jwt-secret", Reason: "symlink followed to " + target},
				{Path: filepath.Join(dir, "link-to-dir"), Reason: "symlink to " + subdir + " (directory), skipped"},
				{Path: filepath.Join(dir, "subdir"), Reason: "directory, skipped without opening it (only regular files are credentials)"},
			},
		},
		{
			name:  "credentials directory, all",
			specs: []Spec{{Kind: CredentialsDirectory}},
			env:   envWith(credsDir),
			want: []got{
				want("api-key", true, Origin{Kind: CredentialsDirectory, Path: filepath.Join(credsDir, "api-key"), Dir: credsDir}, "from-systemd"),
				want("db", true, Origin{Kind: CredentialsDirectory, Path: filepath.Join(credsDir, "db"), Dir: credsDir}, "db-from-systemd"),
			},
		},
		{
			name:  "credentials directory, named",
			specs: []Spec{{Kind: CredentialsDirectory, Names: []string{"db"}}},
			env:   envWith(credsDir),
			want: []got{
				want("db", true, Origin{Kind: CredentialsDirectory, Path: filepath.Join(credsDir, "db"), Dir: credsDir}, "db-from-systemd"),
			},
		},
		{
			name:  "static",
			specs: []Spec{{Kind: Static, Name: "ENVIRONMENT", Value: "test"}},
			want:  []got{want("ENVIRONMENT", false, Origin{Kind: Static}, "test")},
		},
		{
			name: "order is spec order",
			specs: []Spec{
				{Kind: Static, Name: "z", Value: "1"},
				{Kind: File, Name: "a", Path: single},
			},
			want: []got{
				want("z", false, Origin{Kind: Static}, "1"),
				want("a", true, Origin{Kind: File, Path: single}, "single-value"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var creds []Credential
			var warnings []Warning
			var err error
			withTimeout(t, func() { creds, warnings, err = Collect(tt.specs, tt.env) })
			if err != nil {
				t.Fatalf("Collect: %v", err)
			}
			if diff := cmp.Diff(tt.want, view(creds)); diff != "" {
				t.Errorf("credentials (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.warnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCollectErrors(t *testing.T) {
	tmp := t.TempDir()
	single := writeFile(t, filepath.Join(tmp, "single"), "value")
	fifo := filepath.Join(tmp, "fifo")
	mkfifo(t, fifo)
	big := filepath.Join(tmp, "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	// A sparse file one byte over the limit.
	if err := f.Truncate(credential.MaxSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dangling := filepath.Join(tmp, "dangling-dir")
	if err := os.Mkdir(dangling, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(tmp, "nowhere"), filepath.Join(dangling, "gone")); err != nil {
		t.Fatal(err)
	}
	dupDir := t.TempDir()
	writeFile(t, filepath.Join(dupDir, "api-key"), "other")
	credsDir := t.TempDir()

	tests := []struct {
		name  string
		specs []Spec
		env   Env
		is    error
		want  []string
	}{
		{
			name:  "missing file",
			specs: []Spec{{Kind: File, Name: "api-key", Path: "/nonexistent/run/secrets/x"}},
			is:    fs.ErrNotExist,
			want:  []string{`read credential "api-key" from /nonexistent/run/secrets/x: no such file or directory`},
		},
		{
			name:  "fifo named directly",
			specs: []Spec{{Kind: File, Name: "p", Path: fifo}},
			is:    ErrNotRegular,
			want:  []string{`read credential "p" from ` + fifo + `: not a regular file: named pipe (FIFO)`},
		},
		{
			name:  "directory named as a file",
			specs: []Spec{{Kind: File, Name: "d", Path: tmp}},
			is:    ErrNotRegular,
			want:  []string{"not a regular file: directory"},
		},
		{
			name:  "oversize",
			specs: []Spec{{Kind: File, Name: "big", Path: big}},
			is:    ErrTooLarge,
			want:  []string{`read credential "big" from ` + big, "1048577 bytes, over the 1048576-byte limit"},
		},
		{
			name:  "dangling symlink in a directory",
			specs: []Spec{{Kind: Dir, Path: dangling}},
			is:    fs.ErrNotExist,
			want:  []string{`read credential "gone" from ` + filepath.Join(dangling, "gone") + ": dangling symlink to " + filepath.Join(tmp, "nowhere")},
		},
		{
			name:  "missing directory",
			specs: []Spec{{Kind: Dir, Path: "/nonexistent/dir"}},
			is:    fs.ErrNotExist,
			want:  []string{"--cred-dir: list directory /nonexistent/dir: no such file or directory"},
		},
		{
			name:  "credentials directory unset",
			specs: []Spec{{Kind: CredentialsDirectory}},
			env:   envWith(""),
			is:    ErrNoCredentialsDirectory,
			want:  []string{"$CREDENTIALS_DIRECTORY is not set", "LoadCredential=", "microvm@VM.service.d"},
		},
		{
			name:  "named credential missing from credentials directory",
			specs: []Spec{{Kind: CredentialsDirectory, Names: []string{"api-key"}}},
			env:   envWith(credsDir),
			is:    fs.ErrNotExist,
			want:  []string{`read credential "api-key" from ` + filepath.Join(credsDir, "api-key"), "LoadCredential=api-key:PATH"},
		},
		{
			name: "duplicate across sources",
			specs: []Spec{
				{Kind: File, Name: "api-key", Path: single},
				{Kind: Dir, Path: dupDir},
			},
			is:   ErrDuplicate,
			want: []string{`duplicate credential "api-key": from --cred ` + single + " and from --cred-dir " + filepath.Join(dupDir, "api-key")},
		},
		{
			name:  "invalid name in a spec",
			specs: []Spec{{Kind: File, Name: "a/b", Path: single}},
			is:    credential.ErrInvalidName,
			want:  []string{"contains '/'"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var creds []Credential
			var warnings []Warning
			var err error
			withTimeout(t, func() { creds, warnings, err = Collect(tt.specs, tt.env) })
			if err == nil {
				t.Fatal("Collect succeeded, want an error")
			}
			if creds != nil || warnings != nil {
				t.Errorf("Collect returned %d credentials and %d warnings with an error, want none", len(creds), len(warnings))
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("error %q does not wrap %v", err, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestCollectPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root, which reads files whatever their mode; run as a normal user to test permission errors")
	}
	p := filepath.Join(t.TempDir(), "locked")
	writeFile(t, p, "value")
	if err := os.Chmod(p, 0); err != nil {
		t.Fatal(err)
	}
	_, _, err := Collect([]Spec{{Kind: File, Name: "api-key", Path: p}}, envWith(""))
	if !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("Collect error %v, want a permission error", err)
	}
	for _, w := range []string{`read credential "api-key" from ` + p + " as tester (uid 1000): permission denied", "vmcred-host check"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not contain %q", err, w)
		}
	}
}

func TestCheck(t *testing.T) {
	dir, target := clanDir(t)
	target, _ = filepath.EvalSymlinks(target)
	items, warnings, err := func() (i []Item, w []Warning, err error) {
		withTimeout(t, func() {
			i, w, err = Check([]Spec{
				// Check does not need the file to exist: the doctor reports that.
				{Kind: File, Name: "missing", Path: "/nonexistent/secret"},
				{Kind: Dir, Path: dir},
				{Kind: Static, Name: "ENVIRONMENT", Value: "test"},
			}, envWith(""))
		})
		return
	}()
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	wantItems := []Item{
		{Name: "missing", Secret: true, Origin: Origin{Kind: File, Path: "/nonexistent/secret"}},
		{Name: "api-key", Secret: true, Origin: Origin{Kind: Dir, Path: filepath.Join(dir, "api-key"), Dir: dir}},
		{Name: "db-password", Secret: true, Origin: Origin{Kind: Dir, Path: filepath.Join(dir, "db-password"), Dir: dir}},
		{Name: "jwt-secret", Secret: true, Origin: Origin{Kind: Dir, Path: filepath.Join(dir, "jwt-secret"), Dir: dir, Target: target}},
		{Name: "ENVIRONMENT", Origin: Origin{Kind: Static}},
	}
	if diff := cmp.Diff(wantItems, items); diff != "" {
		t.Errorf("items (-want +got):\n%s", diff)
	}
	if len(warnings) != 6 {
		t.Errorf("got %d warnings, want 6: %v", len(warnings), warnings)
	}
}

func TestCheckDoesNotRead(t *testing.T) {
	// An oversize file is an error for Collect but not for Check, which
	// never opens a file.
	big := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(credential.MaxSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	specs := []Spec{{Kind: File, Name: "big", Path: big}}
	if _, _, err := Check(specs, Env{}); err != nil {
		t.Errorf("Check: %v", err)
	}
	if _, _, err := Collect(specs, Env{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Collect error %v, want ErrTooLarge", err)
	}
}

func TestTooManyEntries(t *testing.T) {
	// The real limit is MaxDirEntries; a small one keeps the test fast.
	const limit = 8
	dir := t.TempDir()
	for i := range limit + 1 {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("c%02d", i)), "")
	}
	tests := []struct {
		name                 string
		maxEntries, maxCreds int
		wantErr              bool
	}{
		{"room for all", limit + 1, limit + 1, false},
		{"too many entries", limit, limit + 1, true},
		{"too many credentials", limit + 1, limit, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := walker{maxEntries: tt.maxEntries, maxCreds: tt.maxCreds}
			err := w.walk([]Spec{{Kind: Dir, Path: dir}})
			if got := errors.Is(err, ErrTooMany); got != tt.wantErr {
				t.Errorf("walk error %v, want ErrTooMany: %v", err, tt.wantErr)
			}
		})
	}
}

func TestKindText(t *testing.T) {
	for _, tt := range []struct {
		k          Kind
		flag, text string
	}{
		{File, "--cred", "cred"},
		{Dir, "--cred-dir", "cred-dir"},
		{CredentialsDirectory, "--from-credentials-directory", "credentials-directory"},
		{Static, "--static", "static"},
	} {
		t.Run(tt.text, func(t *testing.T) {
			b, err := tt.k.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{tt.flag, tt.text}, []string{tt.k.String(), string(b)}); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			var back Kind
			if err := back.UnmarshalText(b); err != nil || back != tt.k {
				t.Errorf("UnmarshalText(%q) = %v, %v; want %v", b, back, err, tt.k)
			}
		})
	}
}
