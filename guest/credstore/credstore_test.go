//go:build linux

package credstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/credential"
)

func TestRoundTrip(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	opts := testOpts(t)
	s := openStore(t, dir, opts)
	checkMode(t, dir, fs.ModeDir|dirMode)
	checkMode(t, filepath.Dir(opts.StatePath), fs.ModeDir|dirMode)
	if got := s.Filesystem(); got != Tmpfs {
		t.Errorf("Filesystem() = %v, want tmpfs", got)
	}

	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	values := map[string]string{
		"db.password":            "s3cret-db-password",
		"tls.key":                string(binary),
		"empty":                  "",
		"name with space=and@~*": "line one\nline two\n",
	}
	var es []Entry
	for n, v := range values {
		es = append(es, entries(n, v)...)
	}
	res := mustReplace(t, s, es)
	diffResult(t, Result{Written: []string{"db.password", "empty", "name with space=and@~*", "tls.key"}}, res)
	for n, v := range values {
		checkContent(t, dir, n, v)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %q", tt)
	}
	checkMode(t, opts.StatePath, stateMode)

	// The same set again replaces every file.
	res = mustReplace(t, s, es)
	diffResult(t, Result{
		Written:  []string{"db.password", "empty", "name with space=and@~*", "tls.key"},
		Replaced: []string{"db.password", "empty", "name with space=and@~*", "tls.key"},
	}, res)
	for n, v := range values {
		checkContent(t, dir, n, v)
	}
}

func TestPersistentFilesystem(t *testing.T) {
	base := persistentDir(t)
	kind, err := FilesystemKind(base)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "credstore")

	_, err = Open(dir, testOpts(t))
	if !errors.Is(err, ErrNotInMemory) {
		t.Fatalf("Open on %v: err = %v, want ErrNotInMemory", kind, err)
	}
	for _, want := range []string{dir, kind.String(), "--allow-persistent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused Open created %s (Lstat: %v)", dir, err)
	}
	// An existing directory is refused too.
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, testOpts(t)); !errors.Is(err, ErrNotInMemory) {
		t.Fatalf("Open on existing dir on %v: err = %v, want ErrNotInMemory", kind, err)
	}

	opts := testOpts(t)
	opts.AllowPersistent = true
	s := openStore(t, dir, opts)
	if got := s.Filesystem(); got != kind {
		t.Errorf("Filesystem() = %v, want %v", got, kind)
	}
	mustReplace(t, s, entries("a", "value-a"))
	checkContent(t, dir, "a", "value-a")
}

func TestOpenRefuses(t *testing.T) {
	tests := []struct {
		name     string
		rootOnly bool
		setup    func(t *testing.T, base string) (dir string, opts Options)
		want     []string // substrings of the error
	}{
		{
			name: "symlink store",
			setup: func(t *testing.T, base string) (string, Options) {
				real := filepath.Join(base, "real")
				if err := os.Mkdir(real, 0o700); err != nil {
					t.Fatal(err)
				}
				link := filepath.Join(base, "link")
				if err := os.Symlink(real, link); err != nil {
					t.Fatal(err)
				}
				return link, testOpts(t)
			},
			want: []string{"link", "is a symlink"},
		},
		{
			name: "regular file",
			setup: func(t *testing.T, base string) (string, Options) {
				p := filepath.Join(base, "file")
				if err := os.WriteFile(p, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				return p, testOpts(t)
			},
			want: []string{"file", "is a regular file, not a directory"},
		},
		{
			name: "group readable",
			setup: func(t *testing.T, base string) (string, Options) {
				return mkdirMode(t, base, "store", 0o750), testOpts(t)
			},
			want: []string{"store", "mode 0750 gives group or other access", "chmod 0700"},
		},
		{
			name: "world writable",
			setup: func(t *testing.T, base string) (string, Options) {
				return mkdirMode(t, base, "store", 0o777), testOpts(t)
			},
			want: []string{"mode 0777"},
		},
		{
			name: "missing parent",
			setup: func(t *testing.T, base string) (string, Options) {
				return filepath.Join(base, "no", "store"), testOpts(t)
			},
			want: []string{"parent must exist", filepath.Join("no", "store")},
		},
		{
			name: "no state path",
			setup: func(t *testing.T, base string) (string, Options) {
				return filepath.Join(base, "store"), Options{}
			},
			want: []string{"StatePath is required"},
		},
		{
			name: "state file inside the store",
			setup: func(t *testing.T, base string) (string, Options) {
				dir := filepath.Join(base, "store")
				return dir, Options{StatePath: filepath.Join(dir, "state")}
			},
			want: []string{"must be a file outside the store"},
		},
		{
			name: "state file below the store",
			setup: func(t *testing.T, base string) (string, Options) {
				dir := filepath.Join(base, "store")
				return dir, Options{StatePath: filepath.Join(dir, "sub", "state")}
			},
			want: []string{"must be a file outside the store"},
		},
		{
			name: "state directory's parent missing",
			setup: func(t *testing.T, base string) (string, Options) {
				return filepath.Join(base, "store"), Options{StatePath: filepath.Join(t.TempDir(), "no", "vmcred", "state")}
			},
			want: []string{"create state directory (its parent must exist)", filepath.Join("no", "vmcred")},
		},
		{
			name:     "owned by another user",
			rootOnly: true,
			setup: func(t *testing.T, base string) (string, Options) {
				dir := mkdirMode(t, base, "store", 0o700)
				if err := os.Chown(dir, 65534, 65534); err != nil {
					t.Fatal(err)
				}
				return dir, testOpts(t)
			},
			want: []string{"owned by uid 65534"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rootOnly && os.Geteuid() != 0 {
				t.Skip("needs root to chown")
			}
			base := shmDir(t)
			dir, opts := tc.setup(t, base)
			before := snapshot(t, base)
			s, err := Open(dir, opts)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded, want an error", dir)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if d := cmp.Diff(before, snapshot(t, base)); d != "" {
				t.Errorf("refused Open changed %s (-before +after):\n%s", base, d)
			}
		})
	}
}

func mkdirMode(t *testing.T, base, name string, mode fs.FileMode) string {
	t.Helper()
	p := filepath.Join(base, name)
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// A directory without owner bits is accepted as it is: root needs none, and
// credstores are sometimes created with mode 0000.
func TestOpenAcceptsStricterMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("writing to a mode-0000 directory needs root")
	}
	dir := mkdirMode(t, shmDir(t), "store", 0)
	s := openStore(t, dir, testOpts(t))
	mustReplace(t, s, entries("a", "value-a"))
	checkMode(t, dir, fs.ModeDir)
	checkContent(t, dir, "a", "value-a")
}

// The modes come out exact whatever the umask.
func TestModesIgnoreUmask(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("with umask 0777 only root can still use the files it creates")
	}
	old := syscall.Umask(0o777)
	defer syscall.Umask(old)
	dir := filepath.Join(shmDir(t), "store")
	opts := testOpts(t)
	s := openStore(t, dir, opts)
	mustReplace(t, s, entries("a", "value-a"))
	checkMode(t, dir, fs.ModeDir|dirMode)
	checkContent(t, dir, "a", "value-a")
	checkMode(t, opts.StatePath, stateMode)
}

func TestReplaceRemovesOnlyWhatItWrote(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	mustReplace(t, s, entries("a", "value-a", "b", "value-b", "c", "value-c"))
	// An admin puts a file in the store by hand.
	if err := os.WriteFile(filepath.Join(dir, "admin.cred"), []byte("admin-value"), 0o400); err != nil {
		t.Fatal(err)
	}

	res := mustReplace(t, s, entries("a", "value-a2", "c", "value-c2"))
	diffResult(t, Result{Written: []string{"a", "c"}, Replaced: []string{"a", "c"}, Removed: []string{"b"}}, res)
	if _, err := os.Lstat(filepath.Join(dir, "b")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("b still present after it was dropped: %v", err)
	}
	checkContent(t, dir, "a", "value-a2")
	checkContent(t, dir, "c", "value-c2")
	checkContent(t, dir, "admin.cred", "admin-value")

	// The admin swaps their own file in for c; vmcred then drops c and
	// must leave the admin's file alone.
	p := filepath.Join(dir, "c")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("admin-c"), 0o400); err != nil {
		t.Fatal(err)
	}
	res = mustReplace(t, s, entries("a", "value-a3"))
	diffResult(t, Result{Written: []string{"a"}, Replaced: []string{"a"}, Kept: []string{"c"}}, res)
	checkContent(t, dir, "c", "admin-c")

	// Delivering a name the admin created makes the file vmcred's; a
	// later run that drops it removes it.
	res = mustReplace(t, s, entries("a", "value-a3", "admin.cred", "vmcred-value"))
	diffResult(t, Result{Written: []string{"a", "admin.cred"}, Replaced: []string{"a", "admin.cred"}}, res)
	res = mustReplace(t, s, nil)
	diffResult(t, Result{Removed: []string{"a", "admin.cred"}}, res)
	if d := cmp.Diff(map[string]string{"c": fmt.Sprintf("%v %s", fs.FileMode(0o400), digest([]byte("admin-c")))}, snapshot(t, dir)); d != "" {
		t.Errorf("store after emptying (-want +got):\n%s", d)
	}
}

// setupOld returns an open store holding a and b (written by vmcred) and an
// admin's file.
func setupOld(t *testing.T) (*Store, string) {
	t.Helper()
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	mustReplace(t, s, entries("a", "old-value-a", "b", "old-value-b"))
	if err := os.WriteFile(filepath.Join(dir, "admin.cred"), []byte("admin-value"), 0o400); err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func TestReplacePhase1FailureKeepsOldContent(t *testing.T) {
	big := strings.Repeat("x", credential.MaxSize+1)
	tests := []struct {
		name    string
		setup   func(t *testing.T, s *Store)
		entries []Entry
		want    []string // substrings of the error
		wantAs  any      // pointer to an error type errors.As must find
	}{
		{
			name:    "target is a directory",
			setup:   func(t *testing.T, s *Store) { os.Mkdir(filepath.Join(s.Dir(), "c"), 0o700) },
			entries: entries("a", "new-value-a", "b", "new-value-b", "c", "new-value-c"),
			want:    []string{`stage credential "c"`, "is a directory, not a regular file"},
			wantAs:  new(*EntryError),
		},
		{
			name:    "target is a symlink",
			setup:   func(t *testing.T, s *Store) { os.Symlink("a", filepath.Join(s.Dir(), "c")) },
			entries: entries("a", "new-value-a", "c", "new-value-c"),
			want:    []string{`stage credential "c"`, "is a symlink"},
			wantAs:  new(*EntryError),
		},
		{
			name:    "target is a fifo",
			setup:   func(t *testing.T, s *Store) { syscall.Mkfifo(filepath.Join(s.Dir(), "c"), 0o600) },
			entries: entries("a", "new-value-a", "c", "new-value-c"),
			want:    []string{`stage credential "c"`, "is a named pipe"},
			wantAs:  new(*EntryError),
		},
		{
			name:    "invalid name",
			entries: entries("a", "new-value-a", "../x", "new-value-x"),
			want:    []string{`"../x"`, "contains '/'"},
			wantAs:  new(*credential.NameError),
		},
		{
			name:    "duplicate name",
			entries: entries("a", "new-value-a", "b", "new-value-b", "a", "new-value-a2"),
			want:    []string{`check credential "a"`, "listed more than once"},
			wantAs:  new(*EntryError),
		},
		{
			name:    "value too large",
			entries: entries("a", "new-value-a", "big", big),
			want:    []string{`check credential "big"`, "over the 1048576-byte limit"},
			wantAs:  new(*EntryError),
		},
		{
			name: "state file is a directory",
			setup: func(t *testing.T, s *Store) {
				if err := os.Remove(s.statePath); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(s.statePath, 0o700); err != nil {
					t.Fatal(err)
				}
			},
			entries: entries("a", "new-value-a"),
			want:    []string{"read state", "is a directory"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, dir := setupOld(t)
			if tc.setup != nil {
				tc.setup(t, s)
			}
			before := snapshot(t, dir)
			res, err := s.Replace(tc.entries)
			if err == nil {
				t.Fatal("Replace succeeded, want an error")
			}
			for _, w := range append(tc.want, dir) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tc.wantAs != nil && !errors.As(err, tc.wantAs) {
				t.Errorf("error %q is not a %T", err, tc.wantAs)
			}
			var values []string
			for _, e := range tc.entries {
				values = append(values, string(e.Value.Reveal()))
			}
			checkNoLeak(t, err, values...)
			diffResult(t, Result{}, res)
			if d := cmp.Diff(before, snapshot(t, dir)); d != "" {
				t.Errorf("failed Replace changed the store (-before +after):\n%s", d)
			}
			checkContent(t, dir, "a", "old-value-a")
			checkContent(t, dir, "b", "old-value-b")
		})
	}
}

func TestHostileNames(t *testing.T) {
	for _, name := range []string{"../x", "a/b", ".", "..", "../../etc/shadow", "/etc/shadow", "x:y", "", "a\nb", "tab\there"} {
		t.Run(strconv.Quote(name), func(t *testing.T) {
			base := shmDir(t)
			dir := filepath.Join(base, "credstore")
			s := openStore(t, dir, testOpts(t))
			_, err := s.Replace(entries(name, "hostile-value"))
			if !errors.Is(err, credential.ErrInvalidName) {
				t.Fatalf("Replace(%q): err = %v, want ErrInvalidName", name, err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(name)) {
				t.Errorf("error %q does not name %q", err, name)
			}
			checkNoLeak(t, err, "hostile-value")
			if d := cmp.Diff(map[string]string{"credstore": "d---------"}, snapshot(t, base)); d != "" {
				t.Errorf("something was written (-want +got):\n%s", d)
			}
			if d := cmp.Diff(map[string]string{}, snapshot(t, dir)); d != "" {
				t.Errorf("something was written in the store (-want +got):\n%s", d)
			}
		})
	}
}

// TestCrashBetweenRenames kills Replace (as far as the store can tell)
// between two renames of phase 2.
func TestCrashBetweenRenames(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	opts := testOpts(t)
	s1, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]string{"a": "old-value-a", "b": "old-value-b", "c": "old-value-c"}
	mustReplace(t, s1, entries("a", old["a"], "b", old["b"], "c", old["c"]))

	crash := errors.New("simulated crash")
	renames := 0
	s1.afterRename = func(string) error {
		if renames++; renames == 2 {
			return crash
		}
		return nil
	}
	// Sorted order is a, aa, b, c: the crash comes after a and the new
	// name aa are in place.
	newv := map[string]string{"a": "new-value-a", "aa": "new-value-aa", "b": "new-value-b", "c": "new-value-c"}
	_, err = s1.Replace(entries("a", newv["a"], "aa", newv["aa"], "b", newv["b"], "c", newv["c"]))
	if !errors.Is(err, crash) {
		t.Fatalf("Replace: err = %v, want the simulated crash", err)
	}

	// Every file is whole: old or new, never a mix.
	for _, name := range []string{"a", "b", "c"} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != old[name] && string(got) != newv[name] {
			t.Errorf("credential %q after crash holds %s: neither old nor new", name, digest(got))
		}
	}
	checkContent(t, dir, "a", newv["a"])
	checkContent(t, dir, "aa", newv["aa"])
	checkContent(t, dir, "b", old["b"])
	checkContent(t, dir, "c", old["c"])
	if got := len(temps(t, dir)); got != 2 {
		t.Errorf("%d temporary files after the crash, want 2 (b and c staged)", got)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	// The next agent run cleans up, and knows aa is its own even though the
	// crashed run never recorded its final state.
	s2 := openStore(t, dir, opts)
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("Open left temporary files: %q", tt)
	}
	res := mustReplace(t, s2, nil)
	diffResult(t, Result{Removed: []string{"a", "aa", "b", "c"}}, res)
	if d := cmp.Diff(map[string]string{}, snapshot(t, dir)); d != "" {
		t.Errorf("store not empty (-want +got):\n%s", d)
	}
}

func TestFullFilesystem(t *testing.T) {
	mnt := mountFS(t, "tmpfs", "size=64k,mode=0700")
	dir := filepath.Join(mnt, "credstore")
	s := openStore(t, dir, testOpts(t))
	mustReplace(t, s, entries("a", "old-value-a", "b", "old-value-b"))
	before := snapshot(t, dir)

	big := strings.Repeat("y", 40<<10)
	_, err := s.Replace(entries("a", big, "b", big))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Replace on a full tmpfs: err = %v, want ENOSPC", err)
	}
	if !strings.Contains(err.Error(), `credential "b"`) {
		t.Errorf("error %q does not name credential b", err)
	}
	checkNoLeak(t, err, big)
	if d := cmp.Diff(before, snapshot(t, dir)); d != "" {
		t.Errorf("failed Replace changed the store (-before +after):\n%s", d)
	}

	// The store is still usable.
	mustReplace(t, s, entries("a", "new-value-a"))
	checkContent(t, dir, "a", "new-value-a")
}

// TestStateWriteFailure fails phase 2's first step, recording the intent in
// the state file, after every value is staged: the staged files must go.
func TestStateWriteFailure(t *testing.T) {
	stateDir := mountFS(t, "tmpfs", "size=8k,mode=0700") // two pages
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, Options{StatePath: filepath.Join(stateDir, "credstore.state")})
	mustReplace(t, s, entries("a", "old-value-a", "b", "old-value-b"))
	// The state file holds one page; take the other.
	if err := os.WriteFile(filepath.Join(stateDir, "filler"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	_, err := s.Replace(entries("a", "new-value-a", "b", "new-value-b", "c", "new-value-c"))
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "write state") {
		t.Fatalf("Replace with a full state filesystem: err = %v, want ENOSPC writing the state", err)
	}
	checkNoLeak(t, err, "new-value-a", "new-value-b", "new-value-c")
	if d := cmp.Diff(before, snapshot(t, dir)); d != "" {
		t.Errorf("failed Replace changed the store (-before +after):\n%s", d)
	}
	if d := cmp.Diff([]string{"credstore.state", "filler"}, names(t, stateDir)); d != "" {
		t.Errorf("state directory (-want +got):\n%s", d)
	}
}

func TestOpenRemovesStaleTemps(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	opts := testOpts(t)
	s := openStore(t, dir, opts)
	mustReplace(t, s, entries("a", "value-a"))
	s.Close()

	stateDir, stateName := filepath.Split(opts.StatePath)
	for _, p := range []string{
		filepath.Join(dir, tempPrefix+"LEFTOVER1"),
		filepath.Join(dir, tempPrefix+"LEFTOVER2"),
		filepath.Join(stateDir, "."+stateName+".tmp-LEFTOVER"),
	} {
		if err := os.WriteFile(p, []byte("partial"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	// Look-alikes are not vmcred's and stay.
	for _, p := range []string{filepath.Join(dir, ".vmcred-tmp-admin"), filepath.Join(stateDir, "other.tmp-x")} {
		if err := os.WriteFile(p, []byte("keep"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	openStore(t, dir, opts)
	if d := cmp.Diff([]string{".vmcred-tmp-admin", "a"}, names(t, dir)); d != "" {
		t.Errorf("store after Open (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"credstore.state", "other.tmp-x"}, names(t, stateDir)); d != "" {
		t.Errorf("state directory after Open (-want +got):\n%s", d)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestOpenLocks(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	s1, err := Open(dir, testOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(dir, testOpts(t)); err == nil {
		s2.Close()
		t.Fatal("second Open of a locked store succeeded")
	} else if !strings.Contains(err.Error(), "locked by another process") || !strings.Contains(err.Error(), dir) {
		t.Errorf("second Open: %v", err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	openStore(t, dir, testOpts(t))
}

func TestClose(t *testing.T) {
	s, err := Open(filepath.Join(shmDir(t), "credstore"), testOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Replace(entries("a", "value-a")); !errors.Is(err, ErrClosed) {
		t.Errorf("Replace after Close: err = %v, want ErrClosed", err)
	}
}

// A state file describes one directory: another directory, or a new one at
// the same path, never loses files because of it.
func TestStateBelongsToOneDirectory(t *testing.T) {
	base := shmDir(t)
	opts := testOpts(t)
	dirA := filepath.Join(base, "a")
	s := openStore(t, dirA, opts)
	mustReplace(t, s, entries("x", "value-x"))
	s.Close()

	t.Run("other directory", func(t *testing.T) {
		dirB := filepath.Join(base, "b")
		if err := os.Mkdir(dirB, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirB, "x"), []byte("admin-x"), 0o400); err != nil {
			t.Fatal(err)
		}
		s := openStore(t, dirB, opts)
		diffResult(t, Result{}, mustReplace(t, s, nil))
		checkContent(t, dirB, "x", "admin-x")
		s.Close()
	})
	t.Run("recreated directory", func(t *testing.T) {
		if err := os.RemoveAll(dirA); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dirA, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirA, "x"), []byte("admin-x"), 0o400); err != nil {
			t.Fatal(err)
		}
		s := openStore(t, dirA, opts)
		diffResult(t, Result{}, mustReplace(t, s, nil))
		checkContent(t, dirA, "x", "admin-x")
	})
}

func TestCorruptStateIsAnError(t *testing.T) {
	s, dir := setupOld(t)
	if err := os.WriteFile(s.statePath, []byte("vmcred-credstore-state 1\ndir 1 2 /x\nfile 3 ../etc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	_, err := s.Replace(entries("a", "new-value-a"))
	if err == nil || !strings.Contains(err.Error(), s.statePath) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("Replace with a corrupt state file: err = %v, want one naming %s, line 3", err, s.statePath)
	}
	if d := cmp.Diff(before, snapshot(t, dir)); d != "" {
		t.Errorf("failed Replace changed the store (-before +after):\n%s", d)
	}
}

func TestStateRoundTrip(t *testing.T) {
	st := newState(fileID{dev: 27, ino: 1234}, "/run/cred store")
	st.add("b", 9)
	st.add("a b=c", 7)
	st.add("b", 8)
	st.add("b", 9)
	want := "vmcred-credstore-state 1\ndir 27 1234 /run/cred store\nfile 7 a b=c\nfile 8 b\nfile 9 b\n"
	if d := cmp.Diff(want, string(st.marshal())); d != "" {
		t.Errorf("marshal (-want +got):\n%s", d)
	}
	got, err := parseState(st.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(st, got, cmp.AllowUnexported(state{}, fileID{})); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
}

func TestParseStateErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", "no dir line"},
		{"header only", "vmcred-credstore-state 1\n", "no dir line"},
		{"wrong header", "something else\n", "line 1"},
		{"bad dir", "vmcred-credstore-state 1\ndir x 1 /a\n", "line 2"},
		{"dir without path", "vmcred-credstore-state 1\ndir 1 1\n", "line 2"},
		{"bad file line", "vmcred-credstore-state 1\ndir 1 1 /a\nfile\n", "line 3"},
		{"bad inode", "vmcred-credstore-state 1\ndir 1 1 /a\nfile -1 a\n", "line 3"},
		{"invalid name", "vmcred-credstore-state 1\ndir 1 1 /a\nfile 1 a/b\n", "line 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseState([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseState: err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestEntryErrorText(t *testing.T) {
	err := error(&EntryError{Op: "stage", Name: "db.password", Dir: "/run/credstore", Err: syscall.ENOSPC})
	want := `stage credential "db.password" in /run/credstore: no space left on device`
	if d := cmp.Diff(want, err.Error()); d != "" {
		t.Errorf("Error() (-want +got):\n%s", d)
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Error("EntryError does not unwrap")
	}
}

func BenchmarkReplace100(b *testing.B) {
	base := shmDir(b)
	dir := filepath.Join(base, "credstore")
	s := openStore(b, dir, Options{StatePath: filepath.Join(base, "state", "credstore.state")})
	es := make([]Entry, 100)
	for i := range es {
		v := make([]byte, 64)
		copy(v, fmt.Sprintf("value-%d", i))
		es[i] = Entry{Name: fmt.Sprintf("cred-%03d", i), Value: credential.NewSecret(v)}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Replace(es); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStateAfterFreshStore: for a fresh store Replace skips the second
// state write (the final record equals the intent); the state must still
// record every file by inode, and a later Replace must still rewrite it.
func TestStateAfterFreshStore(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	opts := testOpts(t)
	s := openStore(t, dir, opts)
	mustReplace(t, s, entries("a", "value-a", "b", "value-b"))
	first, err := os.ReadFile(opts.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.readState()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if id, _ := idOf(fi); !st.owns(name, id.ino) {
			t.Errorf("state does not record %s's inode %d", name, id.ino)
		}
	}
	// A second Replace of the same set records the old inodes (intent),
	// then only the new ones: the skip must not hide that write.
	mustReplace(t, s, entries("a", "value-a2", "b", "value-b2"))
	second, err := os.ReadFile(opts.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	if string(first) == string(second) {
		t.Error("the state file was not rewritten by the second Replace")
	}
	st, err = s.readState()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.files["a"]) + len(st.files["b"]); n != 2 {
		t.Errorf("state records %d inodes for a and b after the second Replace, want 2", n)
	}
}
