//go:build linux

package credstore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/credential"
)

// inodeOf returns path's inode (not following a symlink).
func inodeOf(t testing.TB, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := idOf(fi)
	return id.ino
}

// fullSnapshot is snapshot plus each entry's inode: a failed rotation must
// leave the very same files, not equal copies.
func fullSnapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := snapshot(t, dir)
	for name, desc := range out {
		out[name] = fmt.Sprintf("%s ino %d", desc, inodeOf(t, filepath.Join(dir, name)))
	}
	return out
}

// parentLeftovers lists entries beside dir whose names mark a rotation's
// directories.
func parentLeftovers(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), nextInfix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func mustRotate(t testing.TB, s *Store, es []Entry) Rotation {
	t.Helper()
	rot, err := s.Rotate(es)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	return rot
}

func diffRotation(t testing.TB, want, got Rotation) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Rotation mismatch (-want +got):\n%s", d)
	}
}

func TestRotate(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	opts := testOpts(t)
	s := openStore(t, dir, opts)
	// Generation 1, from an empty store.
	rot := mustRotate(t, s, entries("a", "value-a", "b", "value-b", "c", "value-c"))
	diffRotation(t, Rotation{Added: []string{"a", "b", "c"}}, rot)
	// An admin's file and symlink, which rotations must carry as they are.
	admin := filepath.Join(dir, "admin.cred")
	if err := os.WriteFile(admin, []byte("admin-value"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(dir, "admin.link")); err != nil {
		t.Fatal(err)
	}
	inoA, inoAdmin, inoLink := inodeOf(t, filepath.Join(dir, "a")), inodeOf(t, admin), inodeOf(t, filepath.Join(dir, "admin.link"))
	dirIno := inodeOf(t, dir)

	// A process holding the old store open keeps seeing generation 1.
	held, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	// Generation 2: a unchanged, b changed, c removed, d added.
	rot = mustRotate(t, s, entries("a", "value-a", "b", "value-b2", "d", "value-d"))
	diffRotation(t, Rotation{Added: []string{"d"}, Changed: []string{"b"}, Unchanged: []string{"a"}, Removed: []string{"c"}, Foreign: 2}, rot)
	if got := rot.Changes(); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("Changes() = %q, want [b c d]", got)
	}
	checkContent(t, dir, "a", "value-a")
	checkContent(t, dir, "b", "value-b2")
	checkContent(t, dir, "d", "value-d")
	checkContent(t, dir, "admin.cred", "admin-value")
	if _, err := os.Lstat(filepath.Join(dir, "c")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("c still present after it was dropped: %v", err)
	}
	for name, want := range map[string]uint64{"a": inoA, "admin.cred": inoAdmin, "admin.link": inoLink} {
		if got := inodeOf(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s: inode %d after the rotation, want %d (the same file)", name, got, want)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "admin.link")); err != nil || target != "/etc/hostname" {
		t.Errorf("admin.link: %q, %v", target, err)
	}
	if inodeOf(t, dir) == dirIno {
		t.Errorf("the store is the same directory: the rotation did not exchange it")
	}
	checkMode(t, dir, fs.ModeDir|dirMode)
	if l := parentLeftovers(t, dir); len(l) != 0 {
		t.Errorf("rotation left %q beside the store", l)
	}
	if tt := temps(t, dir); len(tt) != 0 {
		t.Errorf("temporary files left: %q", tt)
	}
	// The held descriptor sees the old directory, emptied and removed.
	if names, err := held.Readdirnames(-1); len(names) != 0 || err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old directory after the rotation: %q, %v; want it emptied and removed", names, err)
	}

	// The lock moved with the store: a second agent cannot open it.
	if _, err := Open(dir, testOpts(t)); err == nil || !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("Open of a rotated store held by another agent: err = %v, want EWOULDBLOCK", err)
	}

	// Replace works on the new directory, and the state names it: dropping
	// everything removes only vmcred's files.
	res := mustReplace(t, s, entries("a", "value-a3"))
	diffResult(t, Result{Written: []string{"a"}, Replaced: []string{"a"}, Removed: []string{"b", "d"}}, res)
	rot = mustRotate(t, s, nil)
	diffRotation(t, Rotation{Removed: []string{"a"}, Foreign: 2}, rot)
	if d := cmp.Diff([]string{"admin.cred", "admin.link"}, slices.Sorted(maps.Keys(snapshot(t, dir)))); d != "" {
		t.Errorf("store after emptying (-want +got):\n%s", d)
	}

	// A new agent run (a restart) knows the rotated store's files.
	mustRotate(t, s, entries("x", "value-x"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir, opts)
	rot = mustRotate(t, s2, entries("x", "value-x"))
	diffRotation(t, Rotation{Unchanged: []string{"x"}, Foreign: 2}, rot)
}

// TestRotateAdminReplacedFile: a file an admin put in place of vmcred's is
// never taken for unchanged, and never removed.
func TestRotateAdminReplacedFile(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	mustRotate(t, s, entries("a", "value-a", "b", "value-b"))
	for _, n := range []string{"a", "b"} {
		p := filepath.Join(dir, n)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("value-"+n), 0o400); err != nil { // same bytes, admin's file
			t.Fatal(err)
		}
	}
	inoB := inodeOf(t, filepath.Join(dir, "b"))
	rot := mustRotate(t, s, entries("a", "value-a"))
	diffRotation(t, Rotation{Changed: []string{"a"}, Kept: []string{"b"}}, rot)
	if got := inodeOf(t, filepath.Join(dir, "b")); got != inoB {
		t.Errorf("the admin's b was not carried over as it was")
	}
	checkContent(t, dir, "b", "value-b")
}

// generationValue is credential name's value in generation gen: the reader
// can tell from any file which generation wrote it, and that it is whole.
func generationValue(name string, gen int) string {
	return fmt.Sprintf("gen=%d name=%s pad=%s end", gen, name, strings.Repeat("p", 64+gen%7))
}

// parseGeneration returns the generation a file's content belongs to, or an
// error when it is not a whole value written for name.
func parseGeneration(name string, b []byte) (int, error) {
	rest, ok := bytes.CutPrefix(b, []byte("gen="))
	if !ok {
		return 0, fmt.Errorf("%s: not a generation value", name)
	}
	num, _, _ := bytes.Cut(rest, []byte(" "))
	gen, err := strconv.Atoi(string(num))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if string(b) != generationValue(name, gen) {
		return 0, fmt.Errorf("%s: torn or foreign value claiming generation %d", name, gen)
	}
	return gen, nil
}

// TestRotateReadersNeverSeeAMix runs 100 rotations while two readers loop
// over the store. The directory reader does what systemd's
// LoadCredential=ID:/run/credstore does (open the folder once, read each
// entry relative to it): every round must see one generation only. The
// path reader does what LoadCredential=ID does (open each file by path):
// every file must be whole, and the generations it sees may only go up.
func TestRotateReadersNeverSeeAMix(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	const rounds, changing, static = 100, 12, 4
	names := make([]string, 0, changing)
	for i := range changing {
		names = append(names, fmt.Sprintf("cred-%02d", i))
	}
	gen := func(g int) []Entry {
		var es []Entry
		for _, n := range names {
			es = append(es, entries(n, generationValue(n, g))...)
		}
		for i := range static {
			n := fmt.Sprintf("static-%d", i)
			es = append(es, entries(n, "never changes "+n)...)
		}
		return es
	}
	mustRotate(t, s, gen(1))
	staticIno := inodeOf(t, filepath.Join(dir, "static-0"))

	var done atomic.Bool
	var wg sync.WaitGroup
	var dirRounds, partial, pathReads atomic.Int64
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // directory reader
		defer wg.Done()
		for !done.Load() {
			d, err := os.Open(dir)
			if err != nil {
				errs <- err
				return
			}
			ents, err := d.Readdirnames(-1)
			seen := map[int][]string{}
			incomplete := err != nil
			for _, n := range ents {
				if !strings.HasPrefix(n, "cred-") {
					continue
				}
				b, err := readAt(d, n)
				if err != nil {
					incomplete = true // the old directory being emptied
					continue
				}
				g, err := parseGeneration(n, b)
				if err != nil {
					errs <- err
					d.Close()
					return
				}
				seen[g] = append(seen[g], n)
			}
			d.Close()
			if len(seen) > 1 {
				errs <- fmt.Errorf("mixed read: one pass over the store saw generations %v", seen)
				return
			}
			if incomplete || len(ents) != changing+static {
				partial.Add(1)
			}
			dirRounds.Add(1)
		}
		errs <- nil
	}()
	go func() { // path reader
		defer wg.Done()
		last := map[string]int{}
		for !done.Load() {
			for _, n := range names {
				b, err := os.ReadFile(filepath.Join(dir, n))
				if err != nil {
					errs <- fmt.Errorf("path read %s: %w (a name in every generation must always resolve)", n, err)
					return
				}
				g, err := parseGeneration(n, b)
				if err != nil {
					errs <- err
					return
				}
				if g < last[n] {
					errs <- fmt.Errorf("%s went back from generation %d to %d", n, last[n], g)
					return
				}
				last[n] = g
				pathReads.Add(1)
			}
		}
		errs <- nil
	}()
	for g := 2; g <= rounds+1; g++ {
		rot, err := s.Rotate(gen(g))
		if err != nil {
			done.Store(true)
			wg.Wait()
			t.Fatalf("round %d: %v", g, err)
		}
		if len(rot.Changed) != changing || len(rot.Unchanged) != static {
			t.Errorf("round %d: %d changed, %d unchanged; want %d, %d", g, len(rot.Changed), len(rot.Unchanged), changing, static)
		}
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d rotations; directory reader: %d passes, 0 mixed, %d saw the old directory being emptied; path reader: %d whole reads",
		rounds, dirRounds.Load(), partial.Load(), pathReads.Load())
	if got := inodeOf(t, filepath.Join(dir, "static-0")); got != staticIno {
		t.Errorf("unchanged credential static-0 has a new inode after %d rotations", rounds)
	}
	for _, n := range names {
		checkContent(t, dir, n, generationValue(n, rounds+1))
	}
}

// readAt reads name relative to the open directory d.
func readAt(d *os.File, name string) ([]byte, error) {
	var out []byte
	err := control(d, func(dirfd int) error {
		fd, err := syscall.Openat(dirfd, name, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		var b bytes.Buffer
		_, err = b.ReadFrom(f)
		out = b.Bytes()
		return err
	})
	return out, err
}

// TestRotateFailureKeepsOldSet fails a rotation at every step before the
// exchange, and with bad input: the store, its files' inodes and the state
// file stay byte for byte, nothing is left beside the store, and the next
// rotation works.
func TestRotateFailureKeepsOldSet(t *testing.T) {
	big := strings.Repeat("x", credential.MaxSize+1)
	newSet := entries("a", "new-value-a", "b", "old-value-b", "c", "new-value-c", "n", "new-value-n")
	injected := errors.New("injected fault")
	tests := []struct {
		name    string
		fault   func(step, name string) error
		setup   func(t *testing.T, dir string)
		entries []Entry
		want    []string
	}{
		{name: "stage first", fault: failAt(faultStage, "a", injected), want: []string{`credential "a"`, "injected fault", "nothing was changed"}},
		{name: "stage halfway", fault: failAt(faultStage, "c", injected), want: []string{`credential "c"`, "injected fault"}},
		{name: "carry admin file", fault: failAt(faultCarry, "admin.cred", injected), want: []string{`"admin.cred"`, "injected fault"}},
		{name: "state", fault: failAt(faultState, "", injected), want: []string{"injected fault"}},
		{name: "exchange", fault: failAt(faultExchange, "", injected), want: []string{"injected fault"}},
		{name: "invalid name", entries: entries("a", "v", "bad/name", "v"), want: []string{"bad/name"}},
		{name: "duplicate", entries: entries("a", "v1", "a", "v2"), want: []string{`"a"`, "more than once"}},
		{name: "too large", entries: entries("a", "v", "huge", big), want: []string{`"huge"`, "over the"}},
		{
			name: "fifo where a credential goes",
			setup: func(t *testing.T, dir string) {
				if err := syscall.Mkfifo(filepath.Join(dir, "n"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{`credential "n"`, "a named pipe"},
		},
		{
			name: "directory in the store",
			setup: func(t *testing.T, dir string) {
				if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o700); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{`"subdir" is a directory`, "nothing was changed"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(shmDir(t), "credstore")
			opts := testOpts(t)
			s := openStore(t, dir, opts)
			mustRotate(t, s, entries("a", "old-value-a", "b", "old-value-b", "c", "old-value-c"))
			if err := os.WriteFile(filepath.Join(dir, "admin.cred"), []byte("admin-value"), 0o400); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			before := fullSnapshot(t, dir)
			dirIno := inodeOf(t, dir)
			stateBefore, err := os.ReadFile(opts.StatePath)
			if err != nil {
				t.Fatal(err)
			}
			s.rotateFault = tc.fault
			es := tc.entries
			if es == nil {
				es = newSet
			}
			rot, err := s.Rotate(es)
			if err == nil {
				t.Fatalf("Rotate succeeded (%+v), want an error", rot)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			checkNoLeak(t, err, "new-value-a", "old-value-a", "new-value-n", big)
			diffRotation(t, Rotation{}, rot)
			if d := cmp.Diff(before, fullSnapshot(t, dir)); d != "" {
				t.Errorf("failed Rotate changed the store (-before +after):\n%s", d)
			}
			if inodeOf(t, dir) != dirIno {
				t.Errorf("failed Rotate exchanged the store directory")
			}
			if stateAfter, err := os.ReadFile(opts.StatePath); err != nil || !bytes.Equal(stateAfter, stateBefore) {
				t.Errorf("failed Rotate changed the state file (err %v)", err)
			}
			if l := parentLeftovers(t, dir); len(l) != 0 {
				t.Errorf("failed Rotate left %q beside the store", l)
			}
			// The store still rotates.
			s.rotateFault = nil
			os.Remove(filepath.Join(dir, "n"))
			os.Remove(filepath.Join(dir, "subdir"))
			rot = mustRotate(t, s, newSet)
			diffRotation(t, Rotation{Added: []string{"n"}, Changed: []string{"a", "c"}, Unchanged: []string{"b"}, Foreign: 1}, rot)
		})
	}
}

// failAt returns a rotateFault hook that fails step (for name, if set).
func failAt(step, name string, err error) func(string, string) error {
	return func(s, n string) error {
		if s == step && (name == "" || n == name) {
			return err
		}
		return nil
	}
}

// TestRotateCrashAfterExchange: a crash after the exchange leaves the old
// set beside the store; the next rotation removes it.
func TestRotateCrashAfterExchange(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	opts := testOpts(t)
	s := openStore(t, dir, opts)
	mustRotate(t, s, entries("a", "old-value-a", "b", "old-value-b"))
	crash := errors.New("simulated crash")
	s.rotateFault = failAt(faultCleanup, "", crash)
	rot, err := s.Rotate(entries("a", "new-value-a"))
	if !errors.Is(err, crash) {
		t.Fatalf("Rotate: err = %v, want the simulated crash", err)
	}
	diffRotation(t, Rotation{Changed: []string{"a"}, Removed: []string{"b"}}, rot)
	checkContent(t, dir, "a", "new-value-a")
	if l := parentLeftovers(t, dir); len(l) != 1 {
		t.Fatalf("beside the store after the crash: %q, want the old set", l)
	}
	s.rotateFault = nil
	rot = mustRotate(t, s, entries("a", "new-value-a"))
	diffRotation(t, Rotation{Unchanged: []string{"a"}}, rot)
	if l := parentLeftovers(t, dir); len(l) != 0 {
		t.Errorf("the next rotation left %q beside the store", l)
	}
}

// TestRotateRefusesHostileSurroundings: an attacker who can write the
// store's parent, change the store's mode or owner, swap the store for a
// symlink, or plant entries where a rotation works gets a refusal before
// anything changes.
func TestRotateRefusesHostileSurroundings(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{
			name:  "parent writable by others",
			setup: func(t *testing.T, dir string) { chmod(t, filepath.Dir(dir), 0o777) },
			want:  "group or other may rename entries",
		},
		{
			name:  "parent writable by others, sticky",
			setup: func(t *testing.T, dir string) { chmod(t, filepath.Dir(dir), 0o1777) },
			want:  "group or other may rename entries",
		},
		{
			name:  "store opened to group",
			setup: func(t *testing.T, dir string) { chmod(t, dir, 0o750) },
			want:  "gives group or other access",
		},
		{
			name: "store owned by another user",
			setup: func(t *testing.T, dir string) {
				needRoot(t)
				if err := os.Lchown(dir, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			want: "owned by uid 65534",
		},
		{
			name: "store swapped for a symlink",
			setup: func(t *testing.T, dir string) {
				other := dir + ".attacker"
				if err := os.Mkdir(other, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(dir, dir+".moved"); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(other, dir); err != nil {
					t.Fatal(err)
				}
			},
			want: "no longer the directory the agent opened",
		},
		{
			name: "symlink planted where a credential goes",
			setup: func(t *testing.T, dir string) {
				if err := os.Symlink("/etc/shadow", filepath.Join(dir, "n")); err != nil {
					t.Fatal(err)
				}
			},
			want: `credential "n"`,
		},
		{
			name: "symlink planted under the staging prefix",
			setup: func(t *testing.T, dir string) {
				p := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+nextInfix+"planted")
				if err := os.Symlink("/etc", p); err != nil {
					t.Fatal(err)
				}
			},
			want: "not a directory this agent created",
		},
		{
			name: "another user's directory under the staging prefix",
			setup: func(t *testing.T, dir string) {
				needRoot(t)
				p := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+nextInfix+"planted")
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(p, "keep"), []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Lchown(p, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			},
			want: "not a directory this agent created",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join(shmDir(t), "parent")
			if err := os.Mkdir(base, 0o700); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(base, "credstore")
			opts := testOpts(t)
			s := openStore(t, dir, opts)
			mustRotate(t, s, entries("a", "old-value-a"))
			real := dir
			tc.setup(t, dir)
			if fi, err := os.Lstat(dir + ".moved"); err == nil && fi.IsDir() {
				real = dir + ".moved"
			}
			before := fullSnapshot(t, real)
			stateBefore, _ := os.ReadFile(opts.StatePath)
			_, err := s.Rotate(entries("a", "new-value-a", "n", "new-value-n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Rotate: err = %v, want one containing %q", err, tc.want)
			}
			checkNoLeak(t, err, "new-value-a", "old-value-a")
			if d := cmp.Diff(before, fullSnapshot(t, real)); d != "" {
				t.Errorf("refused Rotate changed the store (-before +after):\n%s", d)
			}
			if stateAfter, _ := os.ReadFile(opts.StatePath); !bytes.Equal(stateAfter, stateBefore) {
				t.Errorf("refused Rotate changed the state file")
			}
			var made []string
			for _, l := range parentLeftovers(t, dir) {
				if !strings.HasSuffix(l, "planted") {
					made = append(made, l)
				}
			}
			if len(made) != 0 {
				t.Errorf("refused Rotate left %q beside the store", made)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode fs.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if mode&fs.ModeSticky != 0 {
		if err := syscall.Chmod(path, uint32(mode.Perm())|syscall.S_ISVTX); err != nil {
			t.Fatal(err)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown; run the tests as root to cover it")
	}
}

// TestRotatePersistent covers the fsync path on a disk filesystem.
func TestRotatePersistent(t *testing.T) {
	dir := filepath.Join(persistentDir(t), "credstore")
	opts := testOpts(t)
	opts.AllowPersistent = true
	s := openStore(t, dir, opts)
	mustRotate(t, s, entries("a", "value-a", "b", "value-b"))
	ino := inodeOf(t, filepath.Join(dir, "a"))
	rot := mustRotate(t, s, entries("a", "value-a", "b", "value-b2"))
	diffRotation(t, Rotation{Changed: []string{"b"}, Unchanged: []string{"a"}}, rot)
	if inodeOf(t, filepath.Join(dir, "a")) != ino {
		t.Errorf("unchanged a has a new inode")
	}
	checkContent(t, dir, "b", "value-b2")
}

// TestRotateClosed: a closed store refuses.
func TestRotateClosed(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	s.Close()
	if _, err := s.Rotate(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Rotate on a closed store: err = %v, want ErrClosed", err)
	}
}

// TestRotateRefusesMountedStore: a store bind-mounted onto itself (what
// systemd's ReadWritePaths=/run/credstore makes in a unit's namespace)
// cannot be exchanged; Rotate says so before touching anything.
func TestRotateRefusesMountedStore(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	mustRotate(t, s, entries("a", "old-value-a"))
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		testenv.SkipOrFail(t, "bind-mount %s: %v (needs CAP_SYS_ADMIN)", dir, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	before := fullSnapshot(t, dir)
	_, err := s.Rotate(entries("a", "new-value-a"))
	if err == nil || !strings.Contains(err.Error(), "mount point of its own") || !strings.Contains(err.Error(), "ReadWritePaths=") {
		t.Fatalf("Rotate of a bind-mounted store: err = %v, want a refusal naming the mount", err)
	}
	if d := cmp.Diff(before, fullSnapshot(t, dir)); d != "" {
		t.Errorf("refused Rotate changed the store (-before +after):\n%s", d)
	}
	if l := parentLeftovers(t, dir); len(l) != 0 {
		t.Errorf("refused Rotate left %q beside the store", l)
	}
}

// TestRotateRamfs: on ramfs (never swapped out) a rotation either works or,
// on a kernel whose ramfs cannot exchange directories, is refused with
// ErrExchangeUnsupported and changes nothing.
func TestRotateRamfs(t *testing.T) {
	mnt := mountFS(t, "ramfs", "mode=0700")
	dir := filepath.Join(mnt, "credstore")
	s := openStore(t, dir, testOpts(t))
	mustReplace(t, s, entries("a", "old-value-a", "b", "old-value-b"))
	before := fullSnapshot(t, dir)
	inoB := inodeOf(t, filepath.Join(dir, "b"))
	rot, err := s.Rotate(entries("a", "new-value-a", "b", "old-value-b"))
	if errors.Is(err, ErrExchangeUnsupported) {
		if d := cmp.Diff(before, fullSnapshot(t, dir)); d != "" {
			t.Errorf("refused Rotate changed the store (-before +after):\n%s", d)
		}
		t.Skipf("this kernel's ramfs cannot exchange directories: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	diffRotation(t, Rotation{Changed: []string{"a"}, Unchanged: []string{"b"}}, rot)
	checkContent(t, dir, "a", "new-value-a")
	if inodeOf(t, filepath.Join(dir, "b")) != inoB {
		t.Errorf("unchanged b has a new inode")
	}
}
