//go:build linux

package debug

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vmcred/vmcred/guest/credstore"
)

// dirHandle is an open folder whose files are hashed by name. It uses
// openat(2) and plain read(2) on a reused buffer: os.File would register
// each file with the poller and io.Copy would allocate a buffer per file,
// which made `list --credstore` over 1000 credentials 2.4 times slower than
// `systemd-creds list` (see BENCHMARKS.md).
type dirHandle struct {
	path string
	fd   int
	dev  uint64         // the folder's st_dev
	kind credstore.Kind // the folder's file system
}

func openDir(dir string) (*dirHandle, error) {
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	d := &dirHandle{path: dir, fd: fd}
	var st syscall.Stat_t
	var sfs syscall.Statfs_t
	if err := syscall.Fstat(fd, &st); err != nil {
		d.close()
		return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if err := syscall.Fstatfs(fd, &sfs); err != nil {
		d.close()
		return nil, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	d.dev, d.kind = uint64(st.Dev), credstore.Kind(uint32(sfs.Type))
	return d, nil
}

func (d *dirHandle) close() { _ = syscall.Close(d.fd) }

// hash hashes the regular file name (one path component) in d without
// following a symlink or blocking on a FIFO swapped in since it was
// listed. buf is the caller's scratch space; it is cleared after use.
func (d *dirHandle) hash(name string, buf []byte, h hash.Hash) digest {
	path := filepath.Join(d.path, name)
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Openat(d.fd, name, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return digest{err: &os.PathError{Op: "open", Path: path, Err: err}}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return digest{err: &os.PathError{Op: "stat", Path: path, Err: err}}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return digest{err: fmt.Errorf("%s: %w", path, errNotRegular)}
	}
	dg := digest{perm: fs.FileMode(st.Mode).Perm(), dev: uint64(st.Dev)}
	if dg.dev != d.dev {
		// Bind-mounted from another file system.
		var sfs syscall.Statfs_t
		if err := syscall.Fstatfs(fd, &sfs); err != nil {
			return digest{err: &os.PathError{Op: "statfs", Path: path, Err: err}}
		}
		dg.kind = credstore.Kind(uint32(sfs.Type))
	}
	h.Reset()
	var n int64
	for {
		k, err := syscall.Read(fd, buf)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			clear(buf)
			return digest{err: &os.PathError{Op: "read", Path: path, Err: err}}
		}
		h.Write(buf[:k])
		n += int64(k)
		if n > maxFile {
			clear(buf)
			return digest{err: fmt.Errorf("read %s: over %d bytes", path, int64(maxFile))}
		}
		// A read of a regular file returns less than asked only at the
		// end of the file: no need for a second read to see 0.
		if k < len(buf) {
			break
		}
	}
	clear(buf[:min(int64(len(buf)), n)])
	dg.size, dg.sum = n, hex.EncodeToString(h.Sum(nil))
	return dg
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		fd, err := f()
		if !errors.Is(err, syscall.EINTR) {
			return fd, err
		}
	}
}
