// Package trustkey reads what a guest trusts: the Ed25519 public keys that
// sign manifests (--trust-key FILE or a folder of *.pub files) and the name
// of the VM the image is for (/etc/vmcred/vm-name). It refuses a file
// that someone other than root or this process's user could have written:
// a trusted key decides which manifests pass, so whoever can replace it can
// sign their own. It is checked as the host checks its signing key, with
// the rule turned around: a public key may be read by all, but written only
// by its owner, and its folder likewise.
//
// Guest packages only. It never logs; errors name the file, never its bytes.
package trustkey

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// MaxKeyFile caps the read of one key file: a public key file is 67 bytes.
const MaxKeyFile = 4096

// ErrUnsafe means a key file or its folder could be written by someone
// other than root or this process's user.
var ErrUnsafe = errors.New("trust key could be replaced by another user")

// ErrNoKeys means a trust folder holds no *.pub file.
var ErrNoKeys = errors.New("trust key folder holds no *.pub file")

// ParseError is a key file that is not a vmcred public key file.
type ParseError struct {
	File string
	Err  error
}

func (e *ParseError) Error() string { return fmt.Sprintf("trust key %s: %v", e.File, e.Err) }

// Unwrap returns the parse error.
func (e *ParseError) Unwrap() error { return e.Err }

// Read returns the keys named by paths, in file-name order: each path is a
// key file, or a folder whose regular *.pub files are all trusted. A key
// file must be a regular file owned by root or by this process's user and
// writable by nobody else, in a folder of which the same holds (a folder
// with the sticky bit, like /tmp, is accepted for a named file: nobody else
// can replace a file there). Symlinks are followed: NixOS links /etc into
// the store, whose files are root's.
func Read(paths []string) ([]ed25519.PublicKey, error) {
	euid := os.Geteuid()
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("trust key: %w", err)
		}
		if !fi.IsDir() {
			if err := checkDir(filepath.Dir(p), euid, true); err != nil {
				return nil, err
			}
			files = append(files, p)
			continue
		}
		if err := checkDir(p, euid, false); err != nil {
			return nil, err
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("trust key folder: %w", err)
		}
		n := 0
		for _, e := range ents {
			if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".pub") {
				files = append(files, filepath.Join(p, e.Name()))
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("%w: %s", ErrNoKeys, p)
		}
	}
	sort.Strings(files)
	keys := make([]ed25519.PublicKey, 0, len(files))
	for _, f := range files {
		k, err := readKey(f, euid)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// readKey opens f, checks what it opened (not what the name pointed to a
// moment before) and parses it.
func readKey(name string, euid int) (ed25519.PublicKey, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("trust key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("trust key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("trust key %s: not a regular file", name)
	}
	if err := check("trust key", name, fi, euid, false); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("trust key: %w", err)
	}
	if len(b) > MaxKeyFile {
		return nil, &ParseError{File: name, Err: fmt.Errorf("over %d bytes: not a public key file", MaxKeyFile)}
	}
	k, err := manifest.ParsePublicKey(b)
	if err != nil {
		return nil, &ParseError{File: name, Err: err}
	}
	return k, nil
}

func checkDir(dir string, euid int, stickyOK bool) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("trust key folder: %w", err)
	}
	return check("trust key folder", dir, fi, euid, stickyOK)
}

// check refuses fi unless root or euid owns it and neither group nor
// others may write it (or, with stickyOK, it is a sticky folder).
func check(what, name string, fi fs.FileInfo, euid int, stickyOK bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s %s: %w: cannot tell its owner on this system", what, name, ErrUnsafe)
	}
	if uid := int(st.Uid); uid != 0 && uid != euid {
		return fmt.Errorf("%s %s: %w: owned by uid %d, not by root or this user (uid %d)", what, name, ErrUnsafe, uid, euid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 && !(stickyOK && fi.Mode()&fs.ModeSticky != 0) {
		return fmt.Errorf("%s %s: %w: mode %04o lets group or others write it (chmod go-w %s)", what, name, ErrUnsafe, perm, name)
	}
	return nil
}

// DefaultVMNameFile is where an image records the name of the VM it is
// for, when the agent is not given --vm: one line, the name `vmcred-host
// pack --vm` uses. The NixOS guest module writes it.
const DefaultVMNameFile = "/etc/vmcred/vm-name"

// ReadVMName reads the VM name from path, checked as a key file is (root's
// or this user's, writable by nobody else, in such a folder): whoever can
// write it chooses which VM's manifests this guest accepts. A missing file
// is an error wrapping fs.ErrNotExist.
func ReadVMName(path string) (string, error) {
	euid := os.Geteuid()
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("vm name file: %w", err)
	}
	if err := checkDir(filepath.Dir(path), euid, false); err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("vm name file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("vm name file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("vm name file %s: not a regular file", path)
	}
	if err := check("vm name file", path, fi, euid, false); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(f, 512))
	if err != nil {
		return "", fmt.Errorf("vm name file: %w", err)
	}
	name := strings.TrimSuffix(string(b), "\n")
	if err := credential.ValidateName(name); err != nil {
		return "", &ParseError{File: path, Err: fmt.Errorf("not a VM name (one line, the name given to vmcred-host pack --vm): %w", err)}
	}
	return name, nil
}
