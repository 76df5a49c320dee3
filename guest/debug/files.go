package debug

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/shared/manifest"
)

// Production locations besides those agent names.
const (
	// DefaultSystemCredentials is where systemd's PID 1 imports credentials.
	DefaultSystemCredentials = "/run/credentials/@system"
	// DefaultTrustDir is the trust folder vmcred-guest.service passes to
	// load with --trust-key.
	DefaultTrustDir = "/etc/vmcred/trusted.d"
)

// maxFile bounds every credential file read: the largest credential a
// manifest may list (channel credentials can exceed systemd's 1 MiB).
const maxFile = manifest.MaxEntrySize

// DefaultSearchPath is where systemd looks for LoadCredential=NAME when NAME
// is relative, in order (reference/systemd-creds.md §3.2;
// credential_search_path in src/core/exec-credential.c): PID 1's
// $CREDENTIALS_DIRECTORY (/run/credentials/@system), /etc/credstore,
// /run/credstore, /usr/local/lib/credstore, /usr/lib/credstore. system and
// store stand in for the first and third, so a test tree or a credstore
// moved with --credstore is searched where it is; "" drops the entry.
func DefaultSearchPath(system, store string) []string {
	var p []string
	for _, d := range []string{system, "/etc/credstore", store, "/usr/local/lib/credstore", "/usr/lib/credstore"} {
		if d != "" {
			p = append(p, d)
		}
	}
	return p
}

// Inspector reads what the debug views show: the status file, the
// credstore, systemd's own copies and the rest of the search path. Nothing
// it reads is printed but names, sizes, modes and digests.
type Inspector struct {
	// Root is the guest's root folder as seen from here: "" (or "/") for
	// the running system, or a guest tree mounted elsewhere. Every path
	// below is the guest's and is read under Root; output shows it as the
	// guest sees it.
	Root string
	// StatusDir holds agent.StatusFile (/run/vmcred).
	StatusDir string
	// Credstore is the folder the agent exposes credentials in
	// (/run/credstore).
	Credstore string
	// SystemCredentials is where systemd imported credentials
	// (/run/credentials/@system); "" skips the cross-check.
	SystemCredentials string
	// SearchPath is LoadCredential=NAME's search order;
	// DefaultSearchPath(SystemCredentials, Credstore) when nil.
	SearchPath []string
	// ListDir rates the credential files of a folder as `systemd-creds
	// list` does; credstore.List when nil. Tests substitute fixed ratings.
	ListDir func(dir string) ([]credstore.FileInfo, error)
	// Now is the clock for not-after checks; time.Now when nil.
	Now func() time.Time
}

func (in Inspector) searchPath() []string {
	if in.SearchPath != nil {
		return in.SearchPath
	}
	return DefaultSearchPath(in.SystemCredentials, in.Credstore)
}

func (in Inspector) listDir(dir string) ([]credstore.FileInfo, error) {
	if in.ListDir != nil {
		return in.ListDir(dir)
	}
	return credstore.List(dir)
}

func (in Inspector) now() time.Time {
	if in.Now != nil {
		return in.Now()
	}
	return time.Now()
}

func (in Inspector) statusPath() string { return filepath.Join(in.StatusDir, agent.StatusFile) }

// real is where the guest path p is on this machine.
func (in Inspector) real(p string) string {
	if in.Root == "" || in.Root == "/" {
		return p
	}
	return filepath.Join(in.Root, p)
}

// folder is one folder of the search path, listed.
type folder struct {
	dir    string
	exists bool
	err    error // other than not existing
	files  map[string]credstore.FileInfo
}

// scan lists every folder on the search path. A missing folder is normal
// (most of them are); another error is kept in its folder.
func (in Inspector) scan() []folder {
	var out []folder
	for _, d := range in.searchPath() {
		f := folder{dir: d, files: map[string]credstore.FileInfo{}}
		infos, err := in.listDir(in.real(d))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			f.exists, f.err = true, err
		default:
			f.exists = true
			for _, fi := range infos {
				f.files[fi.Name] = fi
			}
		}
		out = append(out, f)
	}
	return out
}

// served returns the index of the folder LoadCredential=name takes its
// file from (the first that has it), or -1.
func served(folders []folder, name string) int {
	for i, f := range folders {
		if _, ok := f.files[name]; ok {
			return i
		}
	}
	return -1
}

// displayDir is how tables name a search-path folder: systemd's own
// "@system" for /run/credentials/@system (or whatever stands in for it),
// the path otherwise.
func (in Inspector) displayDir(dir string) string {
	if dir != "" && dir == in.SystemCredentials {
		return "@system"
	}
	return dir
}

// digest is a file's size and SHA-256 (hex), or why it could not be read.
// The Linux hasher also records what fstat said, so a listing needs no
// separate stat pass (see listHashed).
type digest struct {
	size int64
	sum  string
	err  error

	perm fs.FileMode    // permission bits
	dev  uint64         // st_dev
	kind credstore.Kind // the file's own file system, when not the folder's
}

// hashFile hashes the regular file at path without following a final
// symlink. The bytes go to the hash and nowhere else.
func hashFile(path string) digest {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return digest{err: err}
	}
	defer f.Close()
	return hashOpen(f, path)
}

func hashOpen(f *os.File, path string) digest {
	st, err := f.Stat()
	if err != nil {
		return digest{err: err}
	}
	if !st.Mode().IsRegular() {
		return digest{err: fmt.Errorf("%s: not a regular file", path)}
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, maxFile+1))
	if err != nil {
		return digest{err: fmt.Errorf("read %s: %w", path, err)}
	}
	if n > maxFile {
		return digest{err: fmt.Errorf("read %s: over %d bytes", path, int64(maxFile))}
	}
	return digest{size: n, sum: hex.EncodeToString(h.Sum(nil))}
}

// hashAll hashes names in dir on a few goroutines: a credstore holds many
// small files, and the time goes to opening and reading them, not to
// SHA-256. hashOne (per OS) does the work with one reusable buffer per
// goroutine.
func hashAll(dir string, names []string) map[string]digest {
	if len(names) == 0 {
		return map[string]digest{}
	}
	d, err := openDir(dir)
	if err != nil {
		out := make(map[string]digest, len(names))
		for _, n := range names {
			out[n] = digest{err: err}
		}
		return out
	}
	defer d.close()
	return hashWith(d, names)
}

// hashWith hashes names in the open folder d.
func hashWith(d *dirHandle, names []string) map[string]digest {
	out := make(map[string]digest, len(names))
	if len(names) == 0 {
		return out
	}
	results := make([]digest, len(names))
	workers := min(runtime.GOMAXPROCS(0), 8, len(names))
	var wg sync.WaitGroup
	next := make(chan int, len(names))
	for i := range names {
		next <- i
	}
	close(next)
	for range workers {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			defer clear(buf)
			h := sha256.New()
			for i := range next {
				results[i] = d.hash(names[i], buf, h)
			}
		})
	}
	wg.Wait()
	for i, n := range names {
		out[n] = results[i]
	}
	return out
}

// modeString is a permission in the octal form chmod takes, e.g. "0400".
func modeString(m fs.FileMode) string { return fmt.Sprintf("%04o", uint32(m.Perm())) }

// unreadable reports whether err means the caller lacks permission.
func unreadable(err error) bool { return errors.Is(err, fs.ErrPermission) }
