package push

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/host/atomicfile"
	"github.com/vmcred/vmcred/shared/credential"
)

// Record is what the host remembers of the last set a VM's agent accepted:
// the generation and, per credential, its name, size and a keyed MAC of
// its value. It is what --dry-run compares the sources with, and what the
// next push signs a higher generation than.
//
// Why a keyed MAC and not a digest: the record lives on the host's disk,
// and a plain SHA-256 of a weak password can be guessed offline by anyone
// who reads it. The MAC's key is derived from the signing key's seed, so
// the record is worth nothing without the key that can sign for the VM
// anyway. The file is 0600 in a folder only its owner may enter.
type Record struct {
	VM         string        `json:"vm"`
	Generation uint64        `json:"generation"`
	At         time.Time     `json:"at"`
	Entries    []RecordEntry `json:"credentials"`
}

// RecordEntry is one credential of a Record. MAC is hex HMAC-SHA256 of
// the value under RecordKey; never the value, never a plain digest.
type RecordEntry struct {
	Name string `json:"name"`
	Size int    `json:"size"`
	MAC  string `json:"mac"`
}

// maxRecordFile bounds a record read: 4096 entries of at most ~400 bytes.
const maxRecordFile = 4 << 20

// RecordKey derives the record's MAC key from the signing key.
func RecordKey(key ed25519.PrivateKey) []byte {
	m := hmac.New(sha256.New, key.Seed())
	m.Write([]byte("vmcred push record v1"))
	return m.Sum(nil)
}

// NewRecord builds the record of creds, sent as generation gen.
func NewRecord(vm string, gen uint64, at time.Time, creds []Credential, macKey []byte) Record {
	r := Record{VM: vm, Generation: gen, At: at.UTC(), Entries: make([]RecordEntry, 0, len(creds))}
	for _, c := range creds {
		r.Entries = append(r.Entries, RecordEntry{Name: c.Name, Size: c.Value.Len(), MAC: mac(macKey, c.Value)})
	}
	slices.SortFunc(r.Entries, func(a, b RecordEntry) int { return strings.Compare(a.Name, b.Name) })
	return r
}

func mac(key []byte, v credential.Secret) string {
	m := hmac.New(sha256.New, key)
	m.Write(v.Reveal())
	return hex.EncodeToString(m.Sum(nil))
}

// Sized is a credential name and a size in bytes.
type Sized struct {
	Name string `json:"name"`
	Size int    `json:"size"`
	// Was is the size the record holds, for a changed credential.
	Was int `json:"was,omitempty"`
}

// Diff is what a push would change against a record: names and sizes only.
type Diff struct {
	Added, Changed, Removed []Sized
	Unchanged               []string
}

// Empty reports whether the push would change nothing.
func (d Diff) Empty() bool { return len(d.Added)+len(d.Changed)+len(d.Removed) == 0 }

// Compare says what sending creds would change against r (nil: no record,
// so every credential would be sent as new).
func Compare(r *Record, creds []Credential, macKey []byte) Diff {
	var d Diff
	old := map[string]RecordEntry{}
	if r != nil {
		for _, e := range r.Entries {
			old[e.Name] = e
		}
	}
	seen := map[string]bool{}
	for _, c := range creds {
		seen[c.Name] = true
		e, ok := old[c.Name]
		switch {
		case !ok:
			d.Added = append(d.Added, Sized{Name: c.Name, Size: c.Value.Len()})
		case e.Size != c.Value.Len() || !hmac.Equal([]byte(e.MAC), []byte(mac(macKey, c.Value))):
			d.Changed = append(d.Changed, Sized{Name: c.Name, Size: c.Value.Len(), Was: e.Size})
		default:
			d.Unchanged = append(d.Unchanged, c.Name)
		}
	}
	for name, e := range old {
		if !seen[name] {
			d.Removed = append(d.Removed, Sized{Name: name, Size: e.Size})
		}
	}
	by := func(a, b Sized) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(d.Added, by)
	slices.SortFunc(d.Changed, by)
	slices.SortFunc(d.Removed, by)
	slices.Sort(d.Unchanged)
	return d
}

// ErrStateUnsafe: a state folder or file that another user could read or
// write.
var ErrStateUnsafe = errors.New("push state not private")

// RecordPath is vm's record in the state folder dir.
func RecordPath(dir, vm string) string { return filepath.Join(dir, vm+".json") }

// ReadRecord reads vm's record from dir. A missing folder or file is no
// record (nil, nil): a lost state folder makes the next push start above
// the generation the agent reports. A folder or file another user may
// read or write, or that is not this user's, is an error wrapping
// ErrStateUnsafe.
func ReadRecord(dir, vm string) (*Record, error) {
	if err := credential.ValidateName(vm); err != nil {
		return nil, fmt.Errorf("read push state: vm: %w", err)
	}
	if err := checkPrivate(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read push state: %w", err)
	}
	path := RecordPath(dir, vm)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read push state: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read push state: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read push state: %w: %s is not a regular file", ErrStateUnsafe, path)
	}
	if err := checkOwner(path, fi); err != nil {
		return nil, fmt.Errorf("read push state: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRecordFile+1))
	if err != nil {
		return nil, fmt.Errorf("read push state %s: %w", path, err)
	}
	if len(b) > maxRecordFile {
		return nil, fmt.Errorf("read push state %s: over %d bytes", path, maxRecordFile)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode push state %s: %w (remove it: the next push then starts above the agent's generation)", path, err)
	}
	if r.VM != vm {
		return nil, fmt.Errorf("push state %s is for vm %q, not %q", path, r.VM, vm)
	}
	return &r, nil
}

// WriteRecord writes r to dir atomically, mode 0600, creating dir (0700).
func WriteRecord(dir string, r Record) error {
	if err := credential.ValidateName(r.VM); err != nil {
		return fmt.Errorf("write push state: vm: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create push state folder: %w", err)
	}
	if err := checkPrivate(dir); err != nil {
		return fmt.Errorf("write push state: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode push state: %w", err)
	}
	return atomicfile.WriteFile(RecordPath(dir, r.VM), append(b, '\n'), 0o600)
}

// CheckStateDir checks dir as ReadRecord and WriteRecord do; a folder
// that does not exist yet passes (WriteRecord creates it).
func CheckStateDir(dir string) error {
	err := checkPrivate(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// checkPrivate refuses a state folder that is not a real folder, not this
// user's, or that group or others may enter, read or write: the record's
// MACs are as private as the signing key's folder. A symlink is refused
// (Lstat).
func checkPrivate(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a folder", ErrStateUnsafe, dir)
	}
	return checkOwner(dir, fi)
}

func checkOwner(path string, fi fs.FileInfo) error {
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o: other users can reach it; chmod go= it", ErrStateUnsafe, path, m)
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(sys.Uid) != uid {
		return fmt.Errorf("%w: %s belongs to uid %d, not to this user (uid %d)", ErrStateUnsafe, path, sys.Uid, uid)
	}
	return nil
}
