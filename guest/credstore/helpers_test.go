//go:build linux

package credstore

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/credential"
)

// shmDir returns a fresh directory on tmpfs (/dev/shm), removed at cleanup.
func shmDir(t testing.TB) string {
	t.Helper()
	if k, err := FilesystemKind("/dev/shm"); err != nil || k != Tmpfs {
		testenv.SkipOrFail(t, "/dev/shm is not tmpfs here (kind %v, err %v): mount one there to run in-memory tests", k, err)
	}
	d, err := os.MkdirTemp("/dev/shm", "vmcred-credstore-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// persistentDir returns a fresh directory not on tmpfs or ramfs.
func persistentDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	if k, err := FilesystemKind(d); err != nil || k.InMemory() {
		t.Skipf("%s is on %v (err %v); need a persistent filesystem for TMPDIR", d, k, err)
	}
	return d
}

// mountFS mounts a filesystem of type fstype on a new directory, unmounted
// at cleanup. It needs root: without it the test is skipped (even in CI);
// as root a failed mount skips, or fails when CI=true.
func mountFS(t testing.TB, fstype, data string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("mounting %s needs root; run the tests as root to cover it", fstype)
	}
	d := t.TempDir()
	if err := syscall.Mount(fstype, d, fstype, syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, data); err != nil {
		testenv.SkipOrFail(t, "mount -t %s -o %s %s: %v (needs CAP_SYS_ADMIN and kernel support)", fstype, data, d, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(d, 0); err != nil {
			t.Errorf("unmount %s: %v", d, err)
			syscall.Unmount(d, syscall.MNT_DETACH)
		}
	})
	return d
}

// testOpts returns Options with a state file in a not-yet-existing
// directory of its own.
func testOpts(t testing.TB) Options {
	return Options{StatePath: filepath.Join(t.TempDir(), "vmcred", "credstore.state")}
}

// openStore opens dir and closes it at cleanup.
func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// entries builds entries from name, value pairs.
func entries(kv ...string) []Entry {
	var es []Entry
	for i := 0; i+1 < len(kv); i += 2 {
		es = append(es, Entry{Name: kv[i], Value: credential.NewSecret([]byte(kv[i+1]))})
	}
	return es
}

func mustReplace(t testing.TB, s *Store, es []Entry) Result {
	t.Helper()
	res, err := s.Replace(es)
	if err != nil {
		t.Fatalf("Replace: %v", err)
	}
	return res
}

// digest is how tests show a value: length and a digest prefix, never the
// bytes.
func digest(b []byte) string {
	return fmt.Sprintf("%d bytes sha256:%x", len(b), sha256.Sum256(b))[:40]
}

// snapshot describes every entry of dir (type, mode and, for regular files,
// a digest of the content) so tests can compare whole stores with cmp.Diff
// without printing a value.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			out[e.Name()] = fmt.Sprintf("%v %s", fi.Mode(), digest(b))
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[e.Name()] = "symlink to " + target
		default:
			out[e.Name()] = fi.Mode().Type().String()
		}
	}
	return out
}

// checkContent checks that dir/name holds exactly want, with mode 0400.
func checkContent(t testing.TB, dir, name, want string) {
	t.Helper()
	p := filepath.Join(dir, name)
	got, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read credential %q: %v", name, err)
		return
	}
	if !bytes.Equal(got, []byte(want)) {
		t.Errorf("credential %q holds %s, want %s", name, digest(got), digest([]byte(want)))
	}
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != fileMode {
		t.Errorf("credential %q has mode %v, want %v", name, fi.Mode(), fs.FileMode(fileMode))
	}
}

// checkNoLeak fails if err's text contains any of the values. It prints
// only which value (by index) leaked.
func checkNoLeak(t testing.TB, err error, values ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for i, v := range values {
		if len(v) >= 4 && strings.Contains(err.Error(), v) {
			t.Errorf("error text contains secret value #%d", i)
		}
	}
}

func temps(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tempPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

func checkMode(t testing.TB, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode(); got != want {
		t.Errorf("%s has mode %v, want %v", path, got, want)
	}
}

func diffResult(t testing.TB, want, got Result) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Result mismatch (-want +got):\n%s", d)
	}
}
