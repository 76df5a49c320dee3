//go:build linux

package credstore

import (
	"errors"
	"fmt"
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
