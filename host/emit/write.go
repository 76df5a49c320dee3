package emit

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/vmcred/vmcred/host/atomicfile"
)

// ErrUnsafeDir means the runtime directory could let another user read or
// replace payload files.
var ErrUnsafeDir = errors.New("unsafe runtime directory")

// Write creates the files of r, all or nothing: on any error everything it
// wrote (and the runtime directory, if it created it) is removed, and the
// error names the file.
//
// Payload files are created mode 0400 in the runtime directory through an
// os.Root (so nothing lands outside it), each written to a temporary name,
// fsynced and renamed into place, so a file QEMU opens is never partial and
// a previous run's file is replaced. The runtime directory is created 0700
// when missing; an existing one must be a directory owned by this user or
// root and not writable by group or others.
//
// The DMI table (Role RoleDMI) is written the same way next to its target
// path, which need not be in the runtime directory.
func (r *Result) Write() (err error) {
	defer func() {
		if err != nil {
			r.Remove()
		}
	}()
	var inDir []int
	for i, f := range r.Files {
		if f.Role == RoleDMI {
			if err := atomicfile.WriteFile(f.Path, r.payloads[i].Reveal(), f.Mode); err != nil {
				return err
			}
			continue
		}
		inDir = append(inDir, i)
	}
	if len(inDir) == 0 {
		return nil
	}
	created, err := prepareDir(r.RuntimeDir)
	if err != nil {
		return err
	}
	r.createdDir = r.createdDir || created
	root, err := os.OpenRoot(r.RuntimeDir)
	if err != nil {
		return fmt.Errorf("open runtime directory: %w", err)
	}
	defer root.Close()
	for _, i := range inDir {
		f := r.Files[i]
		base := filepath.Base(f.Path)
		if filepath.Join(r.RuntimeDir, base) != f.Path {
			return fmt.Errorf("payload file %s is not directly in the runtime directory %s", f.Path, r.RuntimeDir)
		}
		if err := writeInRoot(root, base, r.payloads[i].Reveal(), f.Mode); err != nil {
			return fmt.Errorf("write %s file for %s: %w", f.Role, describe(f), err)
		}
		if !slices.Contains(r.written, base) {
			r.written = append(r.written, base)
		}
	}
	if err := syncDir(root); err != nil {
		return fmt.Errorf("sync runtime directory %s: %w", r.RuntimeDir, err)
	}
	return nil
}

func describe(f File) string {
	if f.Name != "" {
		return fmt.Sprintf("credential %q (%s)", f.Name, f.Path)
	}
	return f.Path
}

// Remove deletes the payload files Write created in the runtime directory,
// and the directory itself if Write created it. The DMI table is the
// command's output and stays. It returns the first error; it is safe to
// call more than once.
func (r *Result) Remove() error {
	var first error
	if len(r.written) > 0 {
		root, err := os.OpenRoot(r.RuntimeDir)
		if err != nil {
			first = err
		} else {
			for _, base := range r.written {
				if err := root.Remove(base); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
					first = err
				}
			}
			root.Close()
		}
		r.written = nil
	}
	if r.createdDir {
		if err := os.Remove(r.RuntimeDir); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
			first = err
		}
		r.createdDir = false
	}
	return first
}

// prepareDir makes sure dir exists and is safe, and says whether it
// created it.
func prepareDir(dir string) (bool, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, DirMode); err != nil {
			return false, fmt.Errorf("create runtime directory: %w", err)
		}
		// Mkdir's mode is filtered by the umask; set it exactly.
		if err := os.Chmod(dir, DirMode); err != nil {
			os.Remove(dir)
			return false, fmt.Errorf("create runtime directory: %w", err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("runtime directory: %w", err)
	}
	return false, checkExistingDir(dir, fi)
}

func checkExistingDir(dir string, fi fs.FileInfo) error {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("runtime directory %s is a symlink: %w (give the directory it points to)", dir, ErrUnsafeDir)
	case !fi.IsDir():
		return fmt.Errorf("runtime directory %s is not a directory: %w", dir, ErrUnsafeDir)
	case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0:
		return fmt.Errorf("runtime directory %s is mode %04o, writable by group or others, who could replace payload files: %w (use a 0700 directory)",
			dir, fi.Mode().Perm(), ErrUnsafeDir)
	case fi.Mode()&fs.ModeSticky != 0:
		return fmt.Errorf("runtime directory %s is a shared sticky directory (mode %04o): %w (use a private 0700 directory under it)", dir, fi.Mode().Perm(), ErrUnsafeDir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := uint32(os.Geteuid()); st.Uid != uid && st.Uid != 0 {
			return fmt.Errorf("runtime directory %s is owned by uid %d, not by this user (uid %d) or root: %w", dir, st.Uid, uid, ErrUnsafeDir)
		}
	}
	return nil
}

// writeInRoot writes data to name in root: a temporary file created with
// O_EXCL and mode perm, fsynced, then renamed over name.
func writeInRoot(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	tmp := ".tmp-" + name + "-" + rand.Text()[:12]
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	if err := fillAndClose(f, data, perm); err != nil {
		root.Remove(tmp)
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}

// fillAndClose sets f's mode exactly (the umask only removes bits, but be
// explicit), writes data, fsyncs and closes.
func fillAndClose(f *os.File, data []byte, perm fs.FileMode) error {
	err := f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// WriteFile writes a non-secret output file (the JSON plan with --out)
// atomically with mode perm.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return atomicfile.WriteFile(path, data, perm)
}

// CreatedDir reports whether Write created the runtime directory (and
// Remove would remove it).
func (r *Result) CreatedDir() bool { return r.createdDir }
