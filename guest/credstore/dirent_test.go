//go:build linux

package credstore

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestReadDirTypes lists a tmpfs directory holding one file of each type
// and compares every type with what lstat(2) says.
func TestReadDirTypes(t *testing.T) {
	dir := shmDir(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o600))
	must(os.Mkdir(filepath.Join(dir, "dir"), 0o700))
	must(os.Symlink("file", filepath.Join(dir, "link")))
	must(os.Symlink("missing", filepath.Join(dir, "dangling")))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	must(err)
	defer l.Close()
	// Enough names to need more than one getdents64 call.
	for i := range 2000 {
		must(os.WriteFile(filepath.Join(dir, fmt.Sprintf("many-%s-%04d", strings.Repeat("n", 40), i)), nil, 0o600))
	}

	d, err := os.Open(dir)
	must(err)
	defer d.Close()
	types, unknown, err := readDirTypes(int(d.Fd()), dir)
	must(err)
	if len(unknown) != 0 {
		t.Errorf("tmpfs left types unknown for %q", unknown)
	}
	want := map[string]os.FileMode{}
	ents, err := os.ReadDir(dir)
	must(err)
	for _, e := range ents {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		must(err)
		want[e.Name()] = fi.Mode().Type()
	}
	if len(want) != 2006 {
		t.Fatalf("setup: %d entries, want 2006", len(want))
	}
	if d := cmp.Diff(want, types); d != "" {
		t.Errorf("readDirTypes (-lstat +got):\n%s", d)
	}
}

// dirent builds one linux_dirent64 record.
func dirent(name string, dtype uint8) []byte {
	reclen := (19 + len(name) + 1 + 7) &^ 7
	b := make([]byte, reclen)
	binary.NativeEndian.PutUint64(b[0:], 1)
	binary.NativeEndian.PutUint16(b[16:], uint16(reclen))
	b[18] = dtype
	copy(b[19:], name)
	return b
}

func TestParseDirents(t *testing.T) {
	var buf []byte
	for _, r := range [][]byte{dirent(".", syscall.DT_DIR), dirent("..", syscall.DT_DIR), dirent("a", syscall.DT_REG), dirent("name with space", syscall.DT_UNKNOWN)} {
		buf = append(buf, r...)
	}
	var got []string
	if err := parseDirents(buf, func(name string, dtype uint8) { got = append(got, fmt.Sprintf("%s:%d", name, dtype)) }); err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprintf("a:%d", syscall.DT_REG), fmt.Sprintf("name with space:%d", syscall.DT_UNKNOWN)}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}

	good := dirent("a", syscall.DT_REG)
	zero := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(zero[16:], 0)
	long := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(long[16:], uint16(len(good)+8))
	for _, tt := range []struct {
		name, want string
		buf        []byte
	}{
		{"cut header", "cut short: 10 bytes", good[:10]},
		{"zero reclen", "entry of 0 bytes", zero},
		{"reclen past end", "entry of 32 bytes in a 24-byte buffer", long},
	} {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			err := parseDirents(tt.buf, func(string, uint8) { called = true })
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
			if called {
				t.Error("fn called for a malformed record")
			}
		})
	}
}

// FuzzParseDirents: whatever the buffer, parseDirents never panics or
// reads past it, and every name it reports is a real one (not empty, . or
// .., no NUL) found in the buffer.
func FuzzParseDirents(f *testing.F) {
	var good []byte
	for _, r := range [][]byte{dirent(".", syscall.DT_DIR), dirent("..", syscall.DT_DIR), dirent("api-key", syscall.DT_REG), dirent(".vmcred-tmp:X", syscall.DT_UNKNOWN)} {
		good = append(good, r...)
	}
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(dirent(strings.Repeat("n", 255), syscall.DT_LNK))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, buf []byte) {
		err := parseDirents(buf, func(name string, dtype uint8) {
			if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "\x00") {
				t.Errorf("reported name %q", name)
			}
			if !strings.Contains(string(buf), name) {
				t.Errorf("reported name %q is not in the buffer", name)
			}
		})
		if err != nil && !strings.Contains(err.Error(), "directory entry") {
			t.Errorf("error %q does not say what was wrong", err)
		}
	})
}
