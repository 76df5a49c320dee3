package credstore

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vmcred/vmcred/shared/credential"
)

// The state file records which files this agent wrote, so that a later run
// removes those and nothing else. It is line-based text:
//
//	vmcred-credstore-state 1
//	dir DEV INO ABSPATH
//	file INO NAME
//	...
//
// The dir line pins the store's identity: names recorded for another
// directory, or for an earlier directory at the same path (a new mount, or
// rm -r and mkdir), are never acted on. Each file line is one inode vmcred
// wrote under NAME; a name may have several (see Store.Replace), and a file
// is removed only if its inode is among them, so a file an admin put in
// place of vmcred's is left alone. Names are printable ASCII without '/',
// so a name can hold spaces but never a newline: the format is unambiguous.
const (
	stateHeader  = "vmcred-credstore-state 1"
	stateMaxSize = 4 << 20 // 4 MiB: ~16k maximal names; bounded read
	stateMode    = 0o600
)

// state is the decoded state file.
type state struct {
	dir   fileID
	path  string              // absolute store path
	files map[string][]uint64 // name → inodes vmcred wrote under it
}

func newState(dir fileID, path string) *state {
	return &state{dir: dir, path: path, files: map[string][]uint64{}}
}

// add records that ino was written under name.
func (s *state) add(name string, ino uint64) {
	inos := s.files[name]
	if i, found := slices.BinarySearch(inos, ino); !found {
		s.files[name] = slices.Insert(inos, i, ino)
	}
}

// owns reports whether the file with inode ino at name is one vmcred wrote.
func (s *state) owns(name string, ino uint64) bool {
	_, found := slices.BinarySearch(s.files[name], ino)
	return found
}

// names returns the recorded names, sorted.
func (s *state) names() []string {
	out := make([]string, 0, len(s.files))
	for n := range s.files {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (s *state) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\ndir %d %d %s\n", stateHeader, s.dir.dev, s.dir.ino, s.path)
	for _, n := range s.names() {
		for _, ino := range s.files[n] {
			fmt.Fprintf(&b, "file %d %s\n", ino, n)
		}
	}
	return b.Bytes()
}

func parseState(data []byte) (*state, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	line := 0
	var st *state
	for sc.Scan() {
		line++
		text := sc.Text()
		switch {
		case line == 1:
			if text != stateHeader {
				return nil, fmt.Errorf("line 1: not a vmcred credstore state file (want %q)", stateHeader)
			}
		case line == 2:
			f := strings.SplitN(text, " ", 4)
			if len(f) != 4 || f[0] != "dir" || f[3] == "" {
				return nil, fmt.Errorf("line 2: want \"dir DEV INO PATH\"")
			}
			dev, err1 := strconv.ParseUint(f[1], 10, 64)
			ino, err2 := strconv.ParseUint(f[2], 10, 64)
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("line 2: %w", err)
			}
			st = newState(fileID{dev: dev, ino: ino}, f[3])
		default:
			f := strings.SplitN(text, " ", 3)
			if len(f) != 3 || f[0] != "file" {
				return nil, fmt.Errorf("line %d: want \"file INO NAME\"", line)
			}
			ino, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			if err := credential.ValidateName(f[2]); err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			st.add(f[2], ino)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	if st == nil {
		return nil, errors.New("truncated: no dir line")
	}
	return st, nil
}

// readState returns what the previous run recorded for this store, or an
// empty state if there is no state file or it describes another directory.
// A state file that exists but cannot be parsed is an error: it lives on
// /run next to the store and is written atomically, so damage means
// tampering, and guessing could delete files vmcred did not write.
func (s *Store) readState() (*state, error) {
	empty := newState(s.id, s.absDir)
	f, err := s.stateRoot.Open(s.stateName)
	if errors.Is(err, fs.ErrNotExist) {
		return empty, nil
	}
	if err != nil {
		return nil, fmt.Errorf("credstore %s: read state: %w", s.dir, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, stateMaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("credstore %s: read state: %w", s.dir, err)
	}
	if len(data) > stateMaxSize {
		return nil, fmt.Errorf("credstore %s: state file %s is over %d bytes", s.dir, s.statePath, stateMaxSize)
	}
	st, err := parseState(data)
	if err != nil {
		return nil, fmt.Errorf("credstore %s: state file %s (remove it if the store was cleaned by hand): %w", s.dir, s.statePath, err)
	}
	if st.dir != s.id || st.path != s.absDir {
		return empty, nil
	}
	return st, nil
}

// writeState replaces the state file atomically: temp file in the same
// directory, mode 0600, written, fsynced, renamed over the target, then the
// directory fsynced (both fsyncs only off tmpfs and ramfs, where they do
// nothing: as syncStore). A target that is not a regular file is refused.
func (s *Store) writeState(st *state) (err error) {
	data := st.marshal()
	fi, err := s.stateRoot.Lstat(s.stateName)
	switch {
	case err == nil && !fi.Mode().IsRegular():
		return fmt.Errorf("credstore %s: write state: %s is %s, not a regular file", s.dir, s.statePath, typeName(fi.Mode()))
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("credstore %s: write state: %w", s.dir, err)
	}
	tmp := s.stateTempPrefix() + rand.Text()
	f, err := s.stateRoot.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, stateMode)
	if err != nil {
		return fmt.Errorf("credstore %s: write state: %w", s.dir, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			s.stateRoot.Remove(tmp)
			err = fmt.Errorf("credstore %s: write state %s: %w", s.dir, s.statePath, err)
		}
	}()
	if err := f.Chmod(stateMode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if !s.stateInMemory {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := s.stateRoot.Rename(tmp, s.stateName); err != nil {
		return err
	}
	if s.stateInMemory {
		return nil
	}
	return syncDir(s.stateRoot)
}

// stateTempPrefix names the state file's temporary files, so that Open can
// remove those a crash left behind without touching anything else in the
// state directory.
func (s *Store) stateTempPrefix() string { return "." + s.stateName + ".tmp-" }
