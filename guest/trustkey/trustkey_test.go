package trustkey

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestReadVMName(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	if got, err := ReadVMName(write("ok", "vm-a\n", 0o444)); err != nil || got != "vm-a" {
		t.Errorf("a good file: %q, %v", got, err)
	}
	if _, err := ReadVMName(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
	var pe *ParseError
	for _, bad := range []string{"", "a/b\n", "two\nlines\n", "x:y"} {
		if _, err := ReadVMName(write("bad", bad, 0o444)); !errors.As(err, &pe) {
			t.Errorf("%q: %v, want a *ParseError", bad, err)
		}
		os.Remove(filepath.Join(dir, "bad"))
	}
	if _, err := ReadVMName(write("open", "vm-a\n", 0o666)); !errors.Is(err, ErrUnsafe) {
		t.Errorf("a file others can write: %v", err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadVMName(filepath.Join(dir, "ok")); !errors.Is(err, ErrUnsafe) {
		t.Errorf("in a folder others can write: %v", err)
	}
}
