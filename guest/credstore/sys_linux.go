//go:build linux

package credstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// statfsKind returns the filesystem type of path, following symlinks.
func statfsKind(path string) (Kind, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	// f_type is a long, but every magic is 32 bits; on 32-bit platforms
	// RAMFS_MAGIC arrives negative, hence the conversion through uint32.
	return Kind(uint32(st.Type)), nil
}

// fstatfsKind returns the filesystem type of the open file f.
func fstatfsKind(f *os.File) (Kind, error) {
	var st syscall.Statfs_t
	if err := control(f, func(fd int) error { return syscall.Fstatfs(fd, &st) }); err != nil {
		return 0, &os.PathError{Op: "fstatfs", Path: f.Name(), Err: err}
	}
	return Kind(uint32(st.Type)), nil
}

// lockExclusive takes a non-blocking exclusive flock(2) on f, released when
// f is closed.
func lockExclusive(f *os.File) error {
	err := control(f, func(fd int) error { return syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) })
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("locked by another process (another vmcred-guest load?): %w", err)
	}
	return err
}

// control runs fn on f's descriptor without the side effects of f.Fd.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// fileID identifies a file: its device and inode numbers.
type fileID struct {
	dev, ino uint64
}

// idOf returns fi's device and inode. fi must come from os.Stat, os.Lstat,
// File.Stat or Root.Lstat.
func idOf(fi os.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, true
}

// ownerOf returns the uid that owns fi.
func ownerOf(fi os.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// The store's hot path works on the directory's descriptor with single
// path components: what os.Root does for us elsewhere, minus the per-call
// checks (a stat before each rename, an epoll registration attempt for
// each file) that made up half of writing 100 credentials. Names never hold
// '/' (credential.ValidateName and tempPrefix), so nothing here can leave
// the directory, and O_CREAT|O_EXCL never follows a symlink.

// writeNew creates name in dirfd with O_EXCL and mode, makes sure the
// mode is exactly mode whatever the umask, writes data in full, fsyncs if
// sync is set, and returns the new file's inode number. On failure it
// removes the file it created.
func writeNew(dirfd int, name string, mode uint32, data []byte, sync bool) (ino uint64, err error) {
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Openat(dirfd, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, mode)
	})
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: name, Err: err}
	}
	defer func() {
		if cerr := syscall.Close(fd); cerr != nil && err == nil {
			err = &os.PathError{Op: "close", Path: name, Err: cerr}
		}
		if err != nil {
			syscall.Unlinkat(dirfd, name)
		}
	}()
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&0o7777 != mode {
		if err := syscall.Fchmod(fd, mode); err != nil {
			return 0, &os.PathError{Op: "chmod", Path: name, Err: err}
		}
	}
	for len(data) > 0 {
		n, err := retryEINTR(func() (int, error) { return syscall.Write(fd, data) })
		if err != nil {
			return 0, &os.PathError{Op: "write", Path: name, Err: err}
		}
		data = data[n:]
	}
	if sync {
		if err := syscall.Fsync(fd); err != nil {
			return 0, &os.PathError{Op: "fsync", Path: name, Err: err}
		}
	}
	return st.Ino, nil
}

// renameAt renames from to to within dirfd, replacing to.
func renameAt(dirfd int, from, to string) error {
	if err := syscall.Renameat(dirfd, from, dirfd, to); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// readDirTypes lists the directory open as dirfd (shown as dir in errors):
// every name but . and .., with its type from the directory entry. Names
// whose entry records no type (DT_UNKNOWN: some filesystems, never tmpfs)
// are returned in unknown instead.
func readDirTypes(dirfd int, dir string) (types map[string]fs.FileMode, unknown []string, err error) {
	// A descriptor of its own, so the listing starts at the beginning and
	// leaves dirfd's offset alone.
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Openat(dirfd, ".", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer syscall.Close(fd)
	types = map[string]fs.FileMode{}
	buf := make([]byte, 32<<10)
	for {
		n, err := retryEINTR(func() (int, error) { return syscall.ReadDirent(fd, buf) })
		if err != nil {
			return nil, nil, &os.PathError{Op: "readdirent", Path: dir, Err: err}
		}
		if n <= 0 {
			return types, unknown, nil
		}
		if err := parseDirents(buf[:n], func(name string, dtype uint8) {
			if typ, ok := direntType(dtype); ok {
				types[name] = typ
			} else {
				unknown = append(unknown, name)
			}
		}); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", dir, err)
		}
	}
}

// parseDirents calls fn for each linux_dirent64 record in buf, skipping .
// and ..: d_ino (8 bytes), d_off (8), d_reclen (2), d_type (1), then the
// NUL-terminated name, the record padded to 8 bytes.
func parseDirents(buf []byte, fn func(name string, dtype uint8)) error {
	const nameOff = 19
	for len(buf) > 0 {
		if len(buf) < nameOff {
			return fmt.Errorf("directory entry cut short: %d bytes", len(buf))
		}
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < nameOff || reclen > len(buf) {
			return fmt.Errorf("directory entry of %d bytes in a %d-byte buffer", reclen, len(buf))
		}
		rec := buf[:reclen]
		buf = buf[reclen:]
		name := rec[nameOff:]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if s := string(name); s != "." && s != ".." && s != "" {
			fn(s, rec[18])
		}
	}
	return nil
}

// direntType maps a d_type to a file type; false for DT_UNKNOWN or a value
// it does not know.
func direntType(t uint8) (fs.FileMode, bool) {
	switch t {
	case syscall.DT_REG:
		return 0, true
	case syscall.DT_DIR:
		return fs.ModeDir, true
	case syscall.DT_LNK:
		return fs.ModeSymlink, true
	case syscall.DT_FIFO:
		return fs.ModeNamedPipe, true
	case syscall.DT_SOCK:
		return fs.ModeSocket, true
	case syscall.DT_CHR:
		return fs.ModeDevice | fs.ModeCharDevice, true
	case syscall.DT_BLK:
		return fs.ModeDevice, true
	}
	return 0, false
}

// retryEINTR calls fn until it fails with something other than EINTR.
func retryEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
