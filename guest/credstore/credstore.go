package credstore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/vmcred/vmcred/shared/credential"
)

const (
	dirMode  = 0o700
	fileMode = 0o400

	// tempPrefix starts the names of staged files. The ':' makes them
	// invalid credential names (systemd's fdname_is_valid refuses ':'), so
	// ImportCredential=*, `systemd-creds list` and every other consumer skip
	// a half-written file, and no credential vmcred delivers can ever
	// collide with one.
	tempPrefix = ".vmcred-tmp:"
)

var (
	// ErrNotInMemory is wrapped by Open's error for a store that is not on
	// tmpfs or ramfs when Options.AllowPersistent is false.
	ErrNotInMemory = errors.New("not on tmpfs or ramfs")
	// ErrClosed is returned by methods of a closed Store.
	ErrClosed = errors.New("credstore is closed")
)

// Options configures Open.
type Options struct {
	// AllowPersistent accepts a store that is not on tmpfs or ramfs, where
	// secrets may reach a disk and outlive the VM.
	AllowPersistent bool
	// StatePath is the file that records which files this agent wrote, so a
	// later run removes only those (for example
	// /run/vmcred/credstore.state). Required. It must be outside the store.
	// Its parent directory is created with mode 0700 if missing; the
	// grandparent must exist.
	StatePath string
	// MaxSize is the largest value Replace accepts; 0 means
	// credential.MaxSize, systemd's 1 MiB. The agent raises it for
	// credentials fetched over the channel, which never pass through
	// systemd's import and are bounded by the manifest instead
	// (manifest.MaxEntrySize).
	MaxSize int
}

// Entry is one credential to install.
type Entry struct {
	Name  string
	Value credential.Secret
}

// Result says what Replace did. Every list holds credential names, sorted.
type Result struct {
	// Written lists every credential installed, new or replaced.
	Written []string
	// Replaced lists those of Written whose name already had a file.
	Replaced []string
	// Removed lists files a previous run wrote whose names are no longer
	// delivered.
	Removed []string
	// Kept lists names a previous run wrote, no longer delivered, whose file
	// was left in place because it is no longer the one vmcred wrote (an
	// admin replaced it).
	Kept []string
}

// EntryError is a failure tied to one credential. It carries the name, never
// the value.
type EntryError struct {
	Op   string // "check", "stage", "rename" or "remove"
	Name string // credential name
	Dir  string // store directory
	Err  error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("%s credential %q in %s: %v", e.Op, e.Name, e.Dir, e.Err)
}

// Unwrap returns the underlying error.
func (e *EntryError) Unwrap() error { return e.Err }

// Store is an open credstore directory. It holds an exclusive flock(2) on
// the directory until Close, so two agents cannot interleave their writes.
// Its methods are safe for concurrent use.
type Store struct {
	dir       string   // as given, for messages
	absDir    string   // recorded in the state file
	id        fileID   // the directory's identity
	kind      Kind     // its filesystem
	dirFile   *os.File // holds the lock
	root      *os.Root // confines every store operation
	statePath string
	maxSize   int // Options.MaxSize, defaulted
	stateRoot *os.Root
	stateName string
	// stateInMemory: the state directory is on tmpfs or ramfs, where
	// fsync does nothing; writeState then spares those system calls.
	stateInMemory bool
	mu            sync.Mutex
	closed        bool
	// afterRename, set only by tests, runs after each rename in phase 2. If
	// it returns an error, Replace returns that error at once and cleans up
	// nothing, as a process killed at that point would.
	afterRename func(name string) error
	// rotateFault, set only by tests, runs at each step of Rotate (see
	// rotate.go); an error makes that step fail as an I/O error would.
	rotateFault func(step, name string) error
}

// Open opens the credstore at dir, creating dir itself (mode 0700, not its
// parents) if it is missing. It refuses a dir that is a symlink or not a
// directory, one owned by another user, and one that already gives group or
// other any access: such a directory may already hold files planted by
// someone else, so Open asks for a human (chmod 0700 or remove it) rather
// than tightening it silently. A missing owner bit (mode 0500, 0000) is
// accepted; the agent runs as root. Unless opts.AllowPersistent is set, dir
// must be on tmpfs or ramfs. A refused Open removes the directories it
// created. Open removes temporary files a crash left behind, in dir and next
// to the state file.
func Open(dir string, opts Options) (_ *Store, err error) {
	if dir == "" {
		return nil, errors.New("open credstore: directory is empty")
	}
	if opts.StatePath == "" {
		return nil, fmt.Errorf("open credstore %s: Options.StatePath is required", dir)
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open credstore %s: %w", dir, err)
	}
	absState, err := filepath.Abs(opts.StatePath)
	if err != nil {
		return nil, fmt.Errorf("open credstore %s: state file %s: %w", dir, opts.StatePath, err)
	}
	stateDir, stateName := filepath.Split(absState)
	stateDir = filepath.Clean(stateDir)
	if stateName == "" || absState == absDir || stateDir == absDir || strings.HasPrefix(stateDir, absDir+string(filepath.Separator)) {
		return nil, fmt.Errorf("open credstore %s: state file %s must be a file outside the store", dir, opts.StatePath)
	}

	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) && !opts.AllowPersistent {
		// Refuse before creating anything; the check below is the one
		// that counts.
		if kind, err := statfsKind(filepath.Dir(absDir)); err == nil && !kind.InMemory() {
			return nil, notInMemory(dir, kind)
		}
	}
	lfi, created, err := ensureDir("credstore", dir)
	if err != nil {
		return nil, err
	}
	s := &Store{dir: dir, absDir: absDir, statePath: absState, stateName: stateName, maxSize: opts.MaxSize}
	if s.maxSize <= 0 {
		s.maxSize = credential.MaxSize
	}
	var stateCreated bool
	defer func() {
		if err != nil {
			s.closeAll()
			// A refused Open leaves nothing behind. rmdir removes only
			// an empty directory, so this cannot lose anything.
			if stateCreated {
				os.Remove(stateDir)
			}
			if created {
				os.Remove(dir)
			}
		}
	}()
	if s.root, err = os.OpenRoot(dir); err != nil {
		return nil, fmt.Errorf("open credstore: %w", err)
	}
	if s.dirFile, err = s.root.Open("."); err != nil {
		return nil, fmt.Errorf("open credstore %s: %w", dir, err)
	}
	fi, err := s.dirFile.Stat()
	if err != nil {
		return nil, fmt.Errorf("open credstore: %w", err)
	}
	// Lstat refused a symlink; make sure what OpenRoot opened is that same
	// directory and not one swapped in since.
	if !os.SameFile(lfi, fi) {
		return nil, fmt.Errorf("open credstore %s: directory was replaced while being opened", dir)
	}
	s.id, _ = idOf(fi)
	if uid, ok := ownerOf(fi); ok && uid != os.Geteuid() {
		return nil, fmt.Errorf("open credstore %s: owned by uid %d, not by this agent (uid %d)", dir, uid, os.Geteuid())
	}
	if created {
		// Mkdir's mode went through the umask; make it exactly 0700.
		if err := s.dirFile.Chmod(dirMode); err != nil {
			return nil, fmt.Errorf("open credstore: %w", err)
		}
	} else if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("open credstore %s: mode %#o gives group or other access; refusing it (chmod 0700 %s, or remove it and let vmcred create it)", dir, perm, dir)
	}
	if s.kind, err = fstatfsKind(s.dirFile); err != nil {
		return nil, fmt.Errorf("open credstore: %w", err)
	}
	if !s.kind.InMemory() && !opts.AllowPersistent {
		return nil, notInMemory(dir, s.kind)
	}
	if err := lockExclusive(s.dirFile); err != nil {
		return nil, fmt.Errorf("open credstore %s: %w", dir, err)
	}

	sfi, stateCreated, err := ensureDir("state directory", stateDir)
	if err != nil {
		return nil, err
	}
	// Usually /run/vmcred beside /run/credstore: the same filesystem, whose
	// kind is known already. Otherwise ask.
	if sid, ok := idOf(sfi); ok && sid.dev == s.id.dev {
		s.stateInMemory = s.kind.InMemory()
	} else if kind, err := statfsKind(stateDir); err == nil {
		s.stateInMemory = kind.InMemory()
	}
	if s.stateRoot, err = os.OpenRoot(stateDir); err != nil {
		return nil, fmt.Errorf("open state directory: %w", err)
	}
	if err := removeStale(s.root, tempPrefix); err != nil {
		return nil, err
	}
	if err := removeStale(s.stateRoot, s.stateTempPrefix()); err != nil {
		return nil, err
	}
	return s, nil
}

func notInMemory(dir string, kind Kind) error {
	return fmt.Errorf("open credstore %s: %w (filesystem %s); secrets there may reach a disk and outlive the VM; --allow-persistent overrides", dir, ErrNotInMemory, kind)
}

// ensureDir returns the Lstat of dir after creating it with mode 0700 if
// missing (its parent must exist). It refuses a symlink or a non-directory.
// what ("credstore", "state directory") starts every error.
func ensureDir(what, dir string) (fi os.FileInfo, created bool, err error) {
	fi, err = os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		switch err := os.Mkdir(dir, dirMode); {
		case err == nil:
			created = true
		case !errors.Is(err, fs.ErrExist):
			return nil, false, fmt.Errorf("create %s (its parent must exist): %w", what, err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %w", what, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return nil, false, fmt.Errorf("open %s %s: is a symlink; refusing to follow it (use the real path)", what, dir)
	case !fi.IsDir():
		return nil, false, fmt.Errorf("open %s %s: is %s, not a directory", what, dir, typeName(fi.Mode()))
	}
	return fi, created, nil
}

// Dir returns the store's directory as given to Open.
func (s *Store) Dir() string { return s.dir }

// Filesystem returns the type of the filesystem the store is on.
func (s *Store) Filesystem() Kind { return s.kind }

// staged is an entry written to a temporary file in phase 1.
type staged struct {
	name, temp string
	ino        uint64
	existed    bool
}

// Replace makes entries the credentials vmcred provides in the store.
//
// Phase 1 checks every entry (valid, unique name; at most
// Options.MaxSize bytes; the target, if present, a regular file) and
// writes each value to a temporary file in the store, mode 0400, fsynced.
// Any failure removes every temporary file and returns an error: the store
// keeps its previous content and gets nothing from this call.
//
// Phase 2 first records in the state file every name a file of vmcred's
// may hold once the renames are done (the previous set plus the new one),
// so a crash from here on leaves nothing unaccounted for. It then renames
// each temporary file over its target (atomic per file: a reader or a
// crash sees the whole old or the whole new value), fsyncs the directory,
// removes the files a previous run wrote whose names are not in entries
// (never a file vmcred did not write), and records the new set.
//
// A failure in phase 2 (rare: it needs I/O errors or someone changing the
// store meanwhile) is returned along with a Result describing what had been
// done; each file is then whole, old or new.
//
// Errors wrap *credential.NameError for an invalid name and *EntryError for
// other failures tied to one credential.
func (s *Store) Replace(entries []Entry) (Result, error) {
	entries, err := s.check(entries)
	if err != nil {
		return Result{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Result{}, ErrClosed
	}
	prev, err := s.readState()
	if err != nil {
		return Result{}, err
	}
	// One listing serves both the clean-up of a crashed run's temporary
	// files and the type check of every target: a stat per credential
	// would cost more than the rest of the write.
	types, err := s.listTypes()
	if err != nil {
		return Result{}, err
	}
	for name, typ := range types {
		if strings.HasPrefix(name, tempPrefix) && !typ.IsDir() {
			if err := s.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return Result{}, fmt.Errorf("clean up %s: %w", s.dir, err)
			}
		}
	}

	// Phase 1: stage.
	temps := make([]staged, 0, len(entries))
	for _, e := range entries {
		t, err := s.stage(e, types)
		if err != nil {
			return Result{}, errors.Join(err, s.discard(temps))
		}
		temps = append(temps, t)
	}
	intent := newState(s.id, s.absDir)
	for _, n := range prev.names() {
		for _, ino := range prev.files[n] {
			intent.add(n, ino)
		}
	}
	for _, t := range temps {
		intent.add(t.name, t.ino)
	}
	if err := s.writeState(intent); err != nil {
		return Result{}, errors.Join(err, s.discard(temps))
	}

	// Phase 2: commit.
	var res Result
	for i, t := range temps {
		if err := s.renameInStore(t.temp, t.name); err != nil {
			err = &EntryError{Op: "rename", Name: t.name, Dir: s.dir, Err: err}
			return res, errors.Join(err, s.discard(temps[i:]), s.syncStore())
		}
		res.Written = append(res.Written, t.name)
		if t.existed {
			res.Replaced = append(res.Replaced, t.name)
		}
		if s.afterRename != nil {
			if err := s.afterRename(t.name); err != nil {
				return res, err
			}
		}
	}
	if err := s.syncStore(); err != nil {
		return res, fmt.Errorf("credstore %s: %w", s.dir, err)
	}

	final := newState(s.id, s.absDir)
	delivered := make(map[string]bool, len(temps))
	for _, t := range temps {
		final.add(t.name, t.ino)
		delivered[t.name] = true
	}
	var errs []error
	for _, name := range prev.names() {
		if delivered[name] {
			continue
		}
		removed, err := s.removeOwned(prev, name)
		switch {
		case err != nil:
			// Keep it recorded so a later run tries again.
			for _, ino := range prev.files[name] {
				final.add(name, ino)
			}
			errs = append(errs, &EntryError{Op: "remove", Name: name, Dir: s.dir, Err: err})
		case removed:
			res.Removed = append(res.Removed, name)
		default:
			res.Kept = append(res.Kept, name)
		}
	}
	if len(res.Removed) > 0 {
		if err := s.syncStore(); err != nil {
			errs = append(errs, fmt.Errorf("credstore %s: %w", s.dir, err))
		}
	}
	// For a fresh store (the boot case) the final record is the intent
	// already on disk.
	if !bytes.Equal(final.marshal(), intent.marshal()) {
		if err := s.writeState(final); err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// check validates entries before anything touches the disk and returns them
// sorted by name, so runs are deterministic.
func (s *Store) check(entries []Entry) ([]Entry, error) {
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if err := credential.ValidateName(e.Name); err != nil {
			return nil, fmt.Errorf("credstore %s: %w", s.dir, err)
		}
		if seen[e.Name] {
			return nil, &EntryError{Op: "check", Name: e.Name, Dir: s.dir, Err: errors.New("listed more than once")}
		}
		seen[e.Name] = true
		if n := e.Value.Len(); n > s.maxSize {
			return nil, &EntryError{Op: "check", Name: e.Name, Dir: s.dir, Err: fmt.Errorf("%d bytes, over the %d-byte limit", n, s.maxSize)}
		}
	}
	return slices.SortedFunc(slices.Values(entries), func(a, b Entry) int { return strings.Compare(a.Name, b.Name) }), nil
}

// stage writes e's value to a new temporary file: created 0400 with O_EXCL
// (chmod 0400 if the umask removed bits), written in full, and fsynced on a
// filesystem where that means anything (not tmpfs or ramfs). types is the
// store's listing, which says whether the target exists and what it is.
func (s *Store) stage(e Entry, types map[string]fs.FileMode) (_ staged, err error) {
	t := staged{name: e.Name, temp: tempPrefix + rand.Text()}
	defer func() {
		if err != nil {
			err = &EntryError{Op: "stage", Name: e.Name, Dir: s.dir, Err: err}
		}
	}()
	if typ, ok := types[e.Name]; ok {
		if !typ.IsRegular() {
			return t, fmt.Errorf("%s is %s, not a regular file; vmcred will not replace it", filepath.Join(s.dir, e.Name), typeName(typ))
		}
		t.existed = true
	}
	var ino uint64
	err = control(s.dirFile, func(dirfd int) error {
		var err error
		ino, err = writeNew(dirfd, t.temp, fileMode, e.Value.Reveal(), !s.kind.InMemory())
		return err
	})
	if err != nil {
		// writeNew removed what it created.
		return t, err
	}
	t.ino = ino
	return t, nil
}

// listTypes returns the type of every entry of the store.
func (s *Store) listTypes() (map[string]fs.FileMode, error) {
	var types map[string]fs.FileMode
	var unknown []string
	err := control(s.dirFile, func(dirfd int) error {
		var err error
		types, unknown, err = readDirTypes(dirfd, s.dir)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("credstore %s: list: %w", s.dir, err)
	}
	for _, name := range unknown {
		fi, err := s.root.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Removed since listed.
		case err != nil:
			return nil, fmt.Errorf("credstore %s: list: %w", s.dir, err)
		default:
			types[name] = fi.Mode().Type()
		}
	}
	return types, nil
}

// renameInStore renames the store's entry from to to, replacing to.
func (s *Store) renameInStore(from, to string) error {
	return control(s.dirFile, func(dirfd int) error { return renameAt(dirfd, from, to) })
}

// syncStore fsyncs the store's directory, making renames and removals in
// it durable. On tmpfs and ramfs there is no disk to make them durable on
// (their fsync does nothing), so it spares the system call.
func (s *Store) syncStore() error {
	if s.kind.InMemory() {
		return nil
	}
	return syncDir(s.root)
}

// discard removes staged temporary files.
func (s *Store) discard(temps []staged) error {
	var errs []error
	for _, t := range temps {
		if err := s.root.Remove(t.temp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("credstore %s: clean up: %w", s.dir, err))
		}
	}
	return errors.Join(errs...)
}

// removeOwned removes name if it is a regular file that prev says vmcred
// wrote. It reports false, nil when there is nothing of vmcred's to remove.
func (s *Store) removeOwned(prev *state, name string) (bool, error) {
	fi, err := s.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	id, ok := idOf(fi)
	if !ok || !fi.Mode().IsRegular() || id.dev != s.id.dev || !prev.owns(name, id.ino) {
		return false, nil
	}
	if err := s.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// Close releases the lock and the directories. Closing twice is harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.closeAll()
}

func (s *Store) closeAll() error {
	var errs []error
	if s.dirFile != nil {
		errs = append(errs, s.dirFile.Close())
	}
	if s.root != nil {
		errs = append(errs, s.root.Close())
	}
	if s.stateRoot != nil {
		errs = append(errs, s.stateRoot.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close credstore %s: %w", s.dir, err)
	}
	return nil
}

// removeStale removes the non-directory entries of root whose names start
// with prefix: temporary files a crashed run left behind. It lists names
// only and looks closer at those that match: ReadDir on a directory opened
// in a Root lstats every entry, which for a store of many credentials
// costs more than the rest of the clean-up.
func removeStale(root *os.Root, prefix string) error {
	d, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("clean up %s: %w", root.Name(), err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("clean up %s: %w", root.Name(), err)
	}
	var errs []error
	for _, name := range names {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		fi, err := root.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("clean up %s: %w", root.Name(), err))
			continue
		case fi.IsDir():
			continue
		}
		if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("clean up %s: %w", root.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// syncDir fsyncs root's directory, making renames and removals in it durable.
func syncDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", root.Name(), err)
	}
	return nil
}

// typeName describes a file type for error messages.
func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m.IsRegular():
		return "a regular file"
	}
	return "an irregular file"
}
