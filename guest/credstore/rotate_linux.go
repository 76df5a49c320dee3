//go:build linux

package credstore

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// How Rotate swaps a generation (ROTATION.md has the facts behind it):
//
//  1. Next to the store (same parent, same filesystem) it makes a fresh
//     directory, mode 0700, named "." + base + nextInfix + random, locks it
//     and fills it: a delivered credential whose value is what vmcred's
//     file already holds is hard-linked (same inode), a new or changed one
//     is written as a new 0400 file, every entry vmcred never wrote is
//     hard-linked as it is, and vmcred's files that are no longer delivered
//     are left out.
//  2. It records the new set in the state file, pinned to the new
//     directory.
//  3. renameat2(RENAME_EXCHANGE) swaps the two directories in one step:
//     whoever resolves the store's path sees the whole old or the whole new
//     set, and a reader that opened the store before keeps the old one.
//  4. It empties and removes the old directory (now under the staging
//     name) and keeps the new one's lock.
//
// A failure before step 3 removes the new directory and restores nothing,
// because nothing else was touched: the store keeps its set byte for byte.
const nextInfix = ".vmcred-next:"

// Rotate steps names in rotateFault, the test hook.
const (
	faultStage    = "stage"    // before writing or linking one entry (name set)
	faultCarry    = "carry"    // before linking an entry vmcred never wrote
	faultState    = "state"    // before recording the new set
	faultExchange = "exchange" // before the exchange
	faultCleanup  = "cleanup"  // after the exchange, before removing the old set
)

// Rotate makes entries the credentials vmcred provides in the store, as one
// step that readers see all or nothing: it builds the new set in a new
// directory beside the store and exchanges the two directories atomically.
// An unchanged credential keeps its file (the same inode: no reader, and no
// consumer holding it open, sees a difference); removed ones are gone;
// entries vmcred never wrote are carried over untouched.
//
// Rotate refuses, before changing anything, a store whose parent directory
// others can write to (they could swap the names Rotate exchanges), a store
// that is no longer the directory Open checked or has gained group or other
// access, a store holding a directory (which cannot be carried over by a
// hard link), and a non-regular file where a credential is delivered.
//
// Any failure before the exchange leaves the store exactly as it was, and
// the error says so. A failure after it (removing the old set) is returned
// with the Rotation: the new set is in place. The store keeps its path, but
// its directory is a new one: a process that opened the old one sees the old
// set until it closes it, then nothing.
//
// Errors wrap *credential.NameError for an invalid name, *EntryError for
// other failures tied to one credential, and ErrExchangeUnsupported.
func (s *Store) Rotate(entries []Entry) (Rotation, error) {
	entries, err := s.check(entries)
	if err != nil {
		return Rotation{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Rotation{}, ErrClosed
	}
	prev, err := s.readState()
	if err != nil {
		return Rotation{}, err
	}
	p, err := s.openParent()
	if err != nil {
		return Rotation{}, err
	}
	defer p.close()
	if err := p.removeLeftovers(); err != nil {
		return Rotation{}, err
	}
	if err := p.checkStore(s); err != nil {
		return Rotation{}, err
	}
	if err := p.checkOneMount(s); err != nil {
		return Rotation{}, err
	}
	types, err := s.listTypes()
	if err != nil {
		return Rotation{}, err
	}
	delivered := make(map[string]bool, len(entries))
	for _, e := range entries {
		delivered[e.Name] = true
		if typ, ok := types[e.Name]; ok && !typ.IsRegular() {
			return Rotation{}, &EntryError{Op: "check", Name: e.Name, Dir: s.dir,
				Err: fmt.Errorf("%s is %s, not a regular file; vmcred will not replace it", filepath.Join(s.dir, e.Name), typeName(typ))}
		}
	}
	for name, typ := range types {
		if typ.IsDir() {
			return Rotation{}, fmt.Errorf("rotate credstore %s: %q is a directory, which a rotation cannot carry over atomically; move it out of the store (nothing was changed)", s.dir, name)
		}
	}

	next, err := p.mkdirNext(s)
	if err != nil {
		return Rotation{}, err
	}
	committed := false
	defer func() {
		if !committed {
			next.discard(p)
		}
	}()
	rot, final, err := s.fill(next, entries, delivered, types, prev)
	if err == nil && !s.kind.InMemory() {
		err = syncDir(next.root)
	}
	if err == nil {
		err = s.fault(faultState, "")
	}
	if err == nil {
		err = s.writeState(final)
	}
	if err != nil {
		return Rotation{}, unchanged(s.dir, err)
	}
	// From here a crash leaves a state file that names the new directory
	// while the old one is still in place: vmcred then forgets which files
	// it wrote (it never removes a file it does not know), which costs at
	// worst a stale credential in /run until the next reboot.
	err = errors.Join(s.fault(faultExchange, ""), p.checkStore(s))
	if err == nil {
		err = p.exchange(next.name)
	}
	if err != nil {
		return Rotation{}, unchanged(s.dir, errors.Join(err, s.restoreState(prev)))
	}
	committed = true

	old := &nextDir{name: next.name, root: s.root, file: s.dirFile}
	s.root, s.dirFile, s.id = next.root, next.file, next.id
	var errs []error
	if !s.kind.InMemory() {
		errs = append(errs, p.sync())
	}
	if err := s.fault(faultCleanup, ""); err != nil {
		errs = append(errs, err)
	} else if err := old.discard(p); err != nil {
		errs = append(errs, fmt.Errorf("rotate credstore %s: the new set is in place, but removing the old one failed (the next rotation retries): %w", s.dir, err))
	}
	return rot, errors.Join(errs...)
}

// unchanged wraps an error from before the exchange.
func unchanged(dir string, err error) error {
	return fmt.Errorf("rotate credstore %s (nothing was changed): %w", dir, err)
}

// restoreState puts back the record of the old set after a failed exchange.
func (s *Store) restoreState(prev *state) error {
	if err := s.writeState(prev); err != nil {
		return fmt.Errorf("restore the state file: %w", err)
	}
	return nil
}

func (s *Store) fault(step, name string) error {
	if s.rotateFault == nil {
		return nil
	}
	return s.rotateFault(step, name)
}

// fill populates next (phase 1 of Rotate) and returns what the rotation
// will do and the state to record for it.
func (s *Store) fill(next *nextDir, entries []Entry, delivered map[string]bool, types map[string]fs.FileMode, prev *state) (Rotation, *state, error) {
	var rot Rotation
	final := newState(next.id, s.absDir)
	err := control(s.dirFile, func(oldfd int) error {
		return control(next.file, func(newfd int) error {
			for _, e := range entries {
				if err := s.fault(faultStage, e.Name); err != nil {
					return &EntryError{Op: "stage", Name: e.Name, Dir: s.dir, Err: err}
				}
				ino, same, err := s.sameFile(oldfd, e, types, prev)
				if err != nil {
					return &EntryError{Op: "stage", Name: e.Name, Dir: s.dir, Err: err}
				}
				if same {
					if err := linkAt(oldfd, newfd, e.Name); err != nil {
						return &EntryError{Op: "stage", Name: e.Name, Dir: s.dir, Err: err}
					}
					rot.Unchanged = append(rot.Unchanged, e.Name)
					final.add(e.Name, ino)
					continue
				}
				ino, err = writeNew(newfd, e.Name, fileMode, e.Value.Reveal(), !s.kind.InMemory())
				if err != nil {
					return &EntryError{Op: "stage", Name: e.Name, Dir: s.dir, Err: err}
				}
				if _, existed := types[e.Name]; existed {
					rot.Changed = append(rot.Changed, e.Name)
				} else {
					rot.Added = append(rot.Added, e.Name)
				}
				final.add(e.Name, ino)
			}
			for _, name := range slices.Sorted(maps.Keys(types)) {
				if delivered[name] || strings.HasPrefix(name, tempPrefix) {
					continue
				}
				st, err := fstatAt(oldfd, name)
				if errors.Is(err, syscall.ENOENT) {
					continue
				}
				if err != nil {
					return fmt.Errorf("credstore %s: %w", s.dir, err)
				}
				if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Dev) == s.id.dev && prev.owns(name, st.Ino) {
					rot.Removed = append(rot.Removed, name)
					continue
				}
				if err := s.fault(faultCarry, name); err != nil {
					return fmt.Errorf("credstore %s: carry over %q: %w", s.dir, name, err)
				}
				if err := linkAt(oldfd, newfd, name); err != nil {
					return fmt.Errorf("credstore %s: carry over %q: %w", s.dir, name, err)
				}
				if _, recorded := prev.files[name]; recorded {
					rot.Kept = append(rot.Kept, name)
				} else {
					rot.Foreign++
				}
			}
			return nil
		})
	})
	return rot, final, err
}

// sameFile reports whether the store's file for e is one vmcred wrote (per
// prev), mode 0400, holding exactly e's value; if so it returns its inode.
func (s *Store) sameFile(oldfd int, e Entry, types map[string]fs.FileMode, prev *state) (uint64, bool, error) {
	if _, ok := types[e.Name]; !ok {
		return 0, false, nil
	}
	want := e.Value.Reveal()
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Openat(oldfd, e.Name, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	})
	if errors.Is(err, syscall.ENOENT) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, &os.PathError{Op: "open", Path: e.Name, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, false, &os.PathError{Op: "stat", Path: e.Name, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || st.Mode&0o7777 != fileMode || st.Size != int64(len(want)) ||
		st.Dev != s.id.dev || !prev.owns(e.Name, st.Ino) {
		return 0, false, nil
	}
	got := make([]byte, len(want)+1)
	defer clear(got)
	n := 0
	for n < len(got) {
		m, err := retryEINTR(func() (int, error) { return syscall.Read(fd, got[n:]) })
		if err != nil {
			return 0, false, &os.PathError{Op: "read", Path: e.Name, Err: err}
		}
		if m == 0 {
			break
		}
		n += m
	}
	return st.Ino, n == len(want) && subtle.ConstantTimeCompare(got[:n], want) == 1, nil
}

// parent is the store's parent directory, open.
type parent struct {
	path string   // absolute
	base string   // the store's name in it
	file *os.File // O_DIRECTORY
}

// openParent opens the store's parent and refuses one that a user other
// than root and the agent owns, or that group or other can write to: they
// could rename the store or the new directory between Rotate's checks and
// its exchange.
func (s *Store) openParent() (*parent, error) {
	p := &parent{path: filepath.Dir(s.absDir), base: filepath.Base(s.absDir)}
	f, err := os.OpenFile(p.path, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("rotate credstore %s: open its parent: %w", s.dir, err)
	}
	p.file = f
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("rotate credstore %s: %w", s.dir, err)
	}
	uid, _ := ownerOf(fi)
	switch {
	case uid != 0 && uid != os.Geteuid():
		f.Close()
		return nil, fmt.Errorf("rotate credstore %s: its parent %s is owned by uid %d, not by root or this agent; refusing to rotate there (nothing was changed)", s.dir, p.path, uid)
	case fi.Mode().Perm()&0o022 != 0:
		f.Close()
		return nil, fmt.Errorf("rotate credstore %s: its parent %s has mode %#o: group or other may rename entries in it; refusing to rotate there (chmod go-w %s; nothing was changed)", s.dir, p.path, fi.Mode().Perm(), p.path)
	}
	return p, nil
}

func (p *parent) close() { p.file.Close() }

func (p *parent) sync() error {
	if err := p.file.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", p.path, err)
	}
	return nil
}

// checkStore makes sure the store's name in the parent is still the
// directory s has open, owned by this agent, with no group or other access.
func (p *parent) checkStore(s *Store) error {
	var st unix.Stat_t
	err := control(p.file, func(fd int) error {
		return unix.Fstatat(fd, p.base, &st, unix.AT_SYMLINK_NOFOLLOW)
	})
	switch {
	case err != nil:
		return fmt.Errorf("rotate credstore %s: %w", s.dir, &os.PathError{Op: "lstat", Path: s.absDir, Err: err})
	case st.Mode&unix.S_IFMT != unix.S_IFDIR || uint64(st.Dev) != s.id.dev || st.Ino != s.id.ino:
		return fmt.Errorf("rotate credstore %s: %s is no longer the directory the agent opened; refusing to rotate (nothing was changed)", s.dir, s.absDir)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("rotate credstore %s: owned by uid %d, not by this agent (uid %d); refusing to rotate (nothing was changed)", s.dir, st.Uid, os.Geteuid())
	case st.Mode&0o077 != 0:
		return fmt.Errorf("rotate credstore %s: mode %#o gives group or other access; refusing to rotate (chmod 0700 %s; nothing was changed)", s.dir, st.Mode&0o7777, s.dir)
	}
	return nil
}

// checkOneMount refuses a store that is a mount point of its own, in this
// process's mount namespace: neither a hard link nor the exchange can cross
// it (EXDEV). A systemd unit with ProtectSystem= and
// ReadWritePaths=/run/credstore (or RuntimeDirectory=credstore) gets
// exactly that: a bind mount of the store. Kernels without statx's mount
// ID (before 5.8) skip the check; the link then fails with EXDEV.
func (p *parent) checkOneMount(s *Store) error {
	var parentStx, storeStx unix.Statx_t
	err := control(p.file, func(fd int) error {
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &parentStx); err != nil {
			return err
		}
		return unix.Statx(fd, p.base, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &storeStx)
	})
	if err != nil || parentStx.Mask&storeStx.Mask&unix.STATX_MNT_ID == 0 {
		return nil
	}
	if parentStx.Mnt_id != storeStx.Mnt_id {
		return fmt.Errorf("rotate credstore %s: it is a mount point of its own here, not a plain directory in %s: a rotation builds the new set beside it and exchanges the two, which cannot cross mounts; a systemd unit that rotates needs ReadWritePaths=%s, not ReadWritePaths=%s (nothing was changed)", s.dir, p.path, p.path, s.absDir)
	}
	return nil
}

// nextPrefix starts the names of the new directories of this store.
func (p *parent) nextPrefix() string { return "." + p.base + nextInfix }

// nextDir is the directory a rotation fills; after the exchange it is the
// store, and the old store is a nextDir under the staging name.
type nextDir struct {
	name string
	root *os.Root
	file *os.File // locked
	id   fileID
}

// mkdirNext creates and locks the directory the new set goes to.
func (p *parent) mkdirNext(s *Store) (*nextDir, error) {
	n := &nextDir{name: p.nextPrefix() + rand.Text()}
	err := control(p.file, func(fd int) error { return syscall.Mkdirat(fd, n.name, dirMode) })
	if err != nil {
		return nil, fmt.Errorf("rotate credstore %s: %w", s.dir, &os.PathError{Op: "mkdir", Path: filepath.Join(p.path, n.name), Err: err})
	}
	fail := func(err error) (*nextDir, error) {
		n.discard(p)
		return nil, fmt.Errorf("rotate credstore %s: new directory %s: %w", s.dir, filepath.Join(p.path, n.name), err)
	}
	if n.root, err = os.OpenRoot(filepath.Join(p.path, n.name)); err != nil {
		return fail(err)
	}
	if n.file, err = n.root.Open("."); err != nil {
		return fail(err)
	}
	fi, err := n.file.Stat()
	if err != nil {
		return fail(err)
	}
	id, _ := idOf(fi)
	n.id = id
	uid, _ := ownerOf(fi)
	switch {
	case !fi.IsDir() || uid != os.Geteuid():
		return fail(errors.New("not the directory the agent created"))
	case id.dev != s.id.dev:
		return fail(fmt.Errorf("on another filesystem than the store"))
	}
	if err := n.file.Chmod(dirMode); err != nil { // Mkdir's mode went through the umask
		return fail(err)
	}
	if err := lockExclusive(n.file); err != nil {
		return fail(err)
	}
	return n, nil
}

// discard empties and removes the directory n names in p, and closes it.
func (n *nextDir) discard(p *parent) error {
	err := control(p.file, func(fd int) error { return removeFlat(fd, n.name) })
	if n.file != nil {
		n.file.Close()
	}
	if n.root != nil {
		n.root.Close()
	}
	return err
}

// exchange swaps the store and the directory named next in one step.
func (p *parent) exchange(next string) error {
	err := control(p.file, func(fd int) error {
		return unix.Renameat2(fd, next, fd, p.base, unix.RENAME_EXCHANGE)
	})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("%w: %v", ErrExchangeUnsupported, err)
	}
	if err != nil {
		return &os.LinkError{Op: "exchange", Old: filepath.Join(p.path, next), New: filepath.Join(p.path, p.base), Err: err}
	}
	return nil
}

// removeLeftovers removes the directories a rotation that crashed left
// beside the store: the old set (after the exchange) or a half-filled new
// one. Only directories owned by this agent whose names start with the
// store's staging prefix are touched; a symlink or another user's entry is
// refused.
func (p *parent) removeLeftovers() error {
	names, err := readDirNames(p.file)
	if err != nil {
		return fmt.Errorf("clean up %s: %w", p.path, err)
	}
	prefix := p.nextPrefix()
	var errs []error
	for _, name := range names {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		err := control(p.file, func(fd int) error {
			st, err := fstatAt(fd, name)
			switch {
			case errors.Is(err, syscall.ENOENT):
				return nil
			case err != nil:
				return err
			case st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != os.Geteuid():
				return fmt.Errorf("%s is not a directory this agent created; remove it by hand", filepath.Join(p.path, name))
			}
			return removeFlat(fd, name)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("clean up %s: %w", p.path, err))
		}
	}
	return errors.Join(errs...)
}

// removeFlat removes the directory name in dirfd after unlinking every
// entry in it; it never recurses (a rotation's directories hold none).
func removeFlat(dirfd int, name string) error {
	fd, err := retryEINTR(func() (int, error) {
		return syscall.Openat(dirfd, name, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	})
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	types, unknown, err := readDirTypes(fd, name)
	if err != nil {
		syscall.Close(fd)
		return err
	}
	var errs []error
	for _, n := range slices.Concat(slices.Collect(maps.Keys(types)), unknown) {
		if err := unix.Unlinkat(fd, n, 0); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, &os.PathError{Op: "unlink", Path: filepath.Join(name, n), Err: err})
		}
	}
	syscall.Close(fd)
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, &os.PathError{Op: "rmdir", Path: name, Err: err})
	}
	return errors.Join(errs...)
}

// linkAt hard-links name from olddirfd to newdirfd under the same name,
// without following a symlink.
func linkAt(olddirfd, newdirfd int, name string) error {
	if err := unix.Linkat(olddirfd, name, newdirfd, name, 0); err != nil {
		return &os.LinkError{Op: "link", Old: name, New: name, Err: err}
	}
	return nil
}

// fstatAt lstats name in dirfd.
func fstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, &os.PathError{Op: "lstat", Path: name, Err: err}
	}
	return st, nil
}

// readDirNames lists f's directory from its start.
func readDirNames(f *os.File) ([]string, error) {
	var types map[string]fs.FileMode
	var unknown []string
	err := control(f, func(fd int) error {
		var err error
		types, unknown, err = readDirTypes(fd, f.Name())
		return err
	})
	if err != nil {
		return nil, err
	}
	return slices.Concat(slices.Collect(maps.Keys(types)), unknown), nil
}
