//go:build !linux

package debug

import (
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/vmcred/vmcred/guest/credstore"
)

// dirHandle is an open folder whose files are hashed by name.
type dirHandle struct {
	path string
	root *os.Root
}

func openDir(dir string) (*dirHandle, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &dirHandle{path: dir, root: r}, nil
}

func (d *dirHandle) close() { _ = d.root.Close() }

// hash hashes the regular file name in d.
func (d *dirHandle) hash(name string, buf []byte, h hash.Hash) digest {
	path := filepath.Join(d.path, name)
	f, err := d.root.Open(name)
	if err != nil {
		return digest{err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return digest{err: err}
	}
	if !st.Mode().IsRegular() {
		return digest{err: fmt.Errorf("%s: not a regular file", path)}
	}
	h.Reset()
	n, err := io.CopyBuffer(h, io.LimitReader(f, maxFile+1), buf)
	clear(buf)
	if err != nil {
		return digest{err: fmt.Errorf("read %s: %w", path, err)}
	}
	if n > maxFile {
		return digest{err: fmt.Errorf("read %s: over %d bytes", path, int64(maxFile))}
	}
	return digest{size: n, sum: hex.EncodeToString(h.Sum(nil))}
}

// listHashed lists dir with credstore.List and hashes what it lists.
func listHashed(dir string) ([]credstore.FileInfo, map[string]digest, []Skipped, error) {
	return listThenHash(credstore.List, dir)
}
