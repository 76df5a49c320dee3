package source

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vmcred/vmcred/shared/credential"
)

// Collect reads every credential the specs name, in order (directory
// entries sorted by name), and returns them with warnings about what was
// skipped or followed.
//
// Any error (a missing or unreadable file, a named file that is not regular,
// a file over credential.MaxSize, a duplicate name, an unset
// $CREDENTIALS_DIRECTORY) returns no credentials at all, never a partial
// list; values read before the error are wiped.
//
// Directory rules (--cred-dir, and $CREDENTIALS_DIRECTORY without names):
// each regular file is a credential named after it; a symlink is followed
// only if it leads to a regular file (reported as a Warning naming the
// target); subdirectories, FIFOs, sockets, devices, symlinks to anything
// else, hidden files (names starting with '.': editor swap files, sops and
// Kubernetes-style "..data" entries) and names systemd would reject are
// skipped with a Warning and never opened. A dangling symlink is an error:
// it is a secret that should be there and is not. A hidden file can still be
// read by naming it with --cred or --from-credentials-directory=NAME.
func Collect(specs []Spec, env Env) ([]Credential, []Warning, error) {
	return CollectUpTo(specs, env, credential.MaxSize)
}

// CollectUpTo is Collect with another limit on each file's size than
// systemd's 1 MiB (credential.MaxSize). pack raises it when a channel is
// given: channel credentials never pass through systemd's import, and the
// planner decides which delivery can carry what. --static values stay
// bound by credential.MaxSize.
func CollectUpTo(specs []Spec, env Env, maxSize int) ([]Credential, []Warning, error) {
	if maxSize <= 0 {
		maxSize = credential.MaxSize
	}
	w := walker{env: env, read: true, maxEntries: MaxDirEntries, maxCreds: MaxCredentials, maxSize: maxSize}
	if err := w.walk(specs); err != nil {
		for _, c := range w.creds {
			c.Value.Wipe()
		}
		return nil, nil, err
	}
	return w.creds, w.warnings, nil
}

// Check resolves what Collect would read, by the same rules, without reading
// any value: named files are not even opened or checked for existence (the
// doctor in host/access reports missing ones), directories are listed and
// their entries classified with lstat and stat. It returns the same errors
// as Collect for everything but reading files.
func Check(specs []Spec, env Env) ([]Item, []Warning, error) {
	w := walker{env: env, maxEntries: MaxDirEntries, maxCreds: MaxCredentials}
	if err := w.walk(specs); err != nil {
		return nil, nil, err
	}
	items := make([]Item, len(w.creds))
	for i, c := range w.creds {
		items[i] = c.Item()
	}
	return items, w.warnings, nil
}

// walker holds one Collect or Check run.
type walker struct {
	env      Env
	read     bool
	creds    []Credential
	warnings []Warning
	seen     map[string]Origin
	// maxEntries and maxCreds are MaxDirEntries and MaxCredentials,
	// smaller in tests.
	maxEntries, maxCreds int
	// maxSize bounds each file read (credential.MaxSize by default).
	maxSize int
}

func (w *walker) walk(specs []Spec) error {
	w.seen = make(map[string]Origin)
	for _, s := range specs {
		var err error
		switch s.Kind {
		case File:
			err = w.file(s.Name, Origin{Kind: File, Path: s.Path})
		case Dir:
			err = w.dir(Dir, s.Path)
		case CredentialsDirectory:
			err = w.credentialsDirectory(s.Names)
		case Static:
			err = w.static(s)
		default:
			err = usagef("unknown source kind %d", int(s.Kind))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// add records a credential, refusing duplicates and going over MaxCredentials.
func (w *walker) add(c Credential) error {
	if prev, ok := w.seen[c.Name]; ok {
		c.Value.Wipe()
		return fmt.Errorf("%w %q: from %s and from %s", ErrDuplicate, c.Name, prev, c.Origin)
	}
	if len(w.creds) >= w.maxCreds {
		c.Value.Wipe()
		return fmt.Errorf("credential %q from %s: %w: more than %d credentials", c.Name, c.Origin, ErrTooMany, w.maxCreds)
	}
	w.seen[c.Name] = c.Origin
	w.creds = append(w.creds, c)
	return nil
}

func (w *walker) static(s Spec) error {
	if err := credential.ValidateName(s.Name); err != nil {
		return &usageError{err: fmt.Errorf("--static: %w", err)}
	}
	if len(s.Value) > credential.MaxSize {
		return &usageError{err: fmt.Errorf("--static %q: %w: %d bytes, over the %d-byte limit", s.Name, ErrTooLarge, len(s.Value), credential.MaxSize)}
	}
	return w.add(Credential{Name: s.Name, Value: credential.NewSecret([]byte(s.Value)), Origin: Origin{Kind: Static}})
}

// file reads (or, for Check, records) one named file. Symlinks are followed:
// sops-nix deploys secrets as symlinks into /run/secrets.d.
func (w *walker) file(name string, o Origin) error {
	if err := credential.ValidateName(name); err != nil {
		return &usageError{err: fmt.Errorf("%s %s: %w", o.Kind, o.Path, err)}
	}
	if o.Path == "" {
		return &usageError{err: fmt.Errorf("%s: credential %q has an empty path", o.Kind, name)}
	}
	if o.Target == "" {
		o.Target = symlinkTarget(o.Path)
	}
	c := Credential{Name: name, Secret: true, Origin: o}
	if w.read {
		v, err := readRegular(o.Path, w.maxSize)
		if err != nil {
			return w.readError(name, o, err)
		}
		c.Value = v
	}
	return w.add(c)
}

// readError wraps err in a ReadError, adding the user for permission
// problems and a hint where one helps.
func (w *walker) readError(name string, o Origin, err error) error {
	e := &ReadError{Name: name, Path: o.Path, Err: err}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		// The path is already in the message; keep the cause only.
		e.Err = pe.Err
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		e.User = w.env.user()
		e.Hint = "run vmcred-host check to see why and how to fix it; the recommended fix is LoadCredential= on the VM's unit"
	case errors.Is(err, fs.ErrNotExist) && o.Kind == CredentialsDirectory:
		e.Hint = fmt.Sprintf("is LoadCredential=%s:PATH set on this unit?", name)
	}
	return e
}

// credentialsDirectory reads $CREDENTIALS_DIRECTORY: named entries, each of
// which must exist, or (names empty) the whole directory by the Dir rules.
func (w *walker) credentialsDirectory(names []string) error {
	dir := w.env.getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return fmt.Errorf("--from-credentials-directory: %w: it is set only for a unit with LoadCredential=; "+
			"add a drop-in to the VM's unit (e.g. /etc/systemd/system/microvm@VM.service.d/vmcred.conf) with "+
			"[Service] and one LoadCredential=NAME:/path/to/secret line per credential", ErrNoCredentialsDirectory)
	}
	if len(names) == 0 {
		return w.dir(CredentialsDirectory, dir)
	}
	for _, n := range names {
		if err := w.file(n, Origin{Kind: CredentialsDirectory, Path: filepath.Join(dir, n), Dir: dir}); err != nil {
			return err
		}
	}
	return nil
}

// dir lists a directory and takes each entry by the rules in Collect's doc.
func (w *walker) dir(kind Kind, dir string) error {
	entries, err := listDir(dir, w.maxEntries)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		msg := fmt.Sprintf("%s: list directory %s", kind, dir)
		if errors.Is(err, fs.ErrPermission) {
			msg += " as " + w.env.user()
		}
		return fmt.Errorf("%s: %w", msg, err)
	}
	for _, e := range entries {
		if err := w.entry(kind, dir, e); err != nil {
			return err
		}
	}
	return nil
}

// listDir returns the entries of dir sorted by name, or an error if there
// are more than max.
func listDir(dir string, max int) ([]fs.DirEntry, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := f.ReadDir(max + 1)
	if err != nil && err != io.EOF {
		return nil, err
	}
	if len(entries) > max {
		return nil, fmt.Errorf("%w: more than %d entries", ErrTooMany, max)
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, nil
}

func (w *walker) entry(kind Kind, dir string, e fs.DirEntry) error {
	name := e.Name()
	path := filepath.Join(dir, name)
	warn := func(reason string) { w.warnings = append(w.warnings, Warning{Path: path, Reason: reason}) }
	if strings.HasPrefix(name, ".") {
		how := "--cred " + name + "=file:PATH"
		if kind == CredentialsDirectory {
			how = "--from-credentials-directory=" + name
		}
		warn("hidden file, skipped (name it with " + how + " to read it)")
		return nil
	}
	if err := credential.ValidateName(name); err != nil {
		warn(fmt.Sprintf("not a valid credential name, skipped: %v", err))
		return nil
	}
	o := Origin{Kind: kind, Path: path, Dir: dir}
	t := e.Type()
	switch {
	case t.IsRegular():
		return w.file(name, o)
	case t&fs.ModeSymlink != 0:
		fi, err := os.Stat(path)
		if err != nil {
			// A dangling symlink is a deployed secret that is missing.
			target, _ := os.Readlink(path)
			return w.readError(name, o, fmt.Errorf("dangling symlink to %s: %w", target, unwrapPath(err)))
		}
		if !fi.Mode().IsRegular() {
			warn(fmt.Sprintf("symlink to %s (%s), skipped", symlinkTarget(path), describeType(fi.Mode())))
			return nil
		}
		o.Target = symlinkTarget(path)
		w.warnings = append(w.warnings, Warning{Path: path, Name: name, Reason: "symlink followed to " + o.Target})
		return w.file(name, o)
	default:
		warn(describeType(t) + ", skipped without opening it (only regular files are credentials)")
		return nil
	}
}

// symlinkTarget returns the fully resolved path if path is a symlink, else "".
func symlinkTarget(path string) string {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return ""
	}
	t, err := filepath.EvalSymlinks(path)
	if err != nil {
		if t, err = os.Readlink(path); err != nil {
			return ""
		}
	}
	return t
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// describeType names a non-regular file type for messages.
func describeType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsRegular():
		return "regular file"
	}
	return "irregular file"
}

// readRegular reads a regular file of at most max bytes,
// following symlinks. It stats the path first, so a FIFO or device named
// directly is refused without being opened; then it opens with O_NONBLOCK
// (an open of a FIFO that was swapped in meanwhile returns at once instead
// of waiting for a writer) and O_NOCTTY, and checks fstat on the open file,
// so what is read is what was checked.
func readRegular(path string, max int) (credential.Secret, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return credential.Secret{}, err
	}
	if !fi.Mode().IsRegular() {
		return credential.Secret{}, fmt.Errorf("%w: %s", ErrNotRegular, describeType(fi.Mode()))
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return credential.Secret{}, err
	}
	defer f.Close()
	fi, err = f.Stat()
	if err != nil {
		return credential.Secret{}, err
	}
	if !fi.Mode().IsRegular() {
		return credential.Secret{}, fmt.Errorf("%w: %s", ErrNotRegular, describeType(fi.Mode()))
	}
	if fi.Size() > int64(max) {
		return credential.Secret{}, fmt.Errorf("%w: %d bytes, over the %d-byte limit", ErrTooLarge, fi.Size(), max)
	}
	// The size can change after fstat, and some files report 0: cap the read
	// at max+1 so going over is seen without reading more.
	limit := max + 1
	buf := make([]byte, 0, fi.Size()+1)
	for {
		if len(buf) == cap(buf) {
			// Grow by hand so the old copy of the value can be cleared.
			nb := make([]byte, len(buf), min(2*cap(buf)+512, limit))
			copy(nb, buf)
			clear(buf)
			buf = nb
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > max {
			clear(buf)
			return credential.Secret{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, max)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			clear(buf)
			return credential.Secret{}, err
		}
	}
	return credential.NewSecret(buf), nil
}
