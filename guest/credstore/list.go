package credstore

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vmcred/vmcred/shared/credential"
)

// Security is how `systemd-creds list` rates a credential file.
type Security string

// The ratings, as src/creds/creds.c (add_credentials_to_table) assigns them.
const (
	// Secure: mode 0400 or stricter, on ramfs or on tmpfs mounted noswap.
	Secure Security = "secure"
	// Weak: mode 0400 or stricter on any other filesystem, tmpfs without
	// noswap included, and also (as systemd does) a persistent one.
	Weak Security = "weak"
	// Insecure: any permission besides the owner's read bit
	// (st_mode & 0377 != 0), for example 0600 or 0440.
	Insecure Security = "insecure"
)

// FileInfo describes one credential file in a store.
type FileInfo struct {
	Name       string
	Size       int64
	Mode       fs.FileMode // permission bits only, e.g. 0400
	Filesystem Kind
	Security   Security
}

// mountinfoPath is where List learns mount options. Only a constant: tests
// inject a reader through list.
const mountinfoPath = "/proc/self/mountinfo"

// List describes the credential files in dir, sorted by name, as
// `systemd-creds list` would: entries that are not regular files or whose
// names are not valid credential names (vmcred's own temporary files among
// them) are skipped. A tmpfs file counts as Secure only if
// /proc/self/mountinfo shows its mount has the noswap option (statfs alone
// cannot tell); if mountinfo cannot be read or has no line for the file's
// device, the file is rated Weak, as systemd does.
func List(dir string) ([]FileInfo, error) {
	return list(dir, func() (io.ReadCloser, error) { return os.Open(mountinfoPath) })
}

func list(dir string, openMountinfo func() (io.ReadCloser, error)) ([]FileInfo, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("list credstore: %w", err)
	}
	defer root.Close()
	d, err := root.Open(".")
	if err != nil {
		return nil, fmt.Errorf("list credstore %s: %w", dir, err)
	}
	defer d.Close()
	dfi, err := d.Stat()
	if err != nil {
		return nil, fmt.Errorf("list credstore: %w", err)
	}
	dirID, _ := idOf(dfi)
	dirKind, err := fstatfsKind(d)
	if err != nil {
		return nil, fmt.Errorf("list credstore: %w", err)
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list credstore %s: %w", dir, err)
	}
	slices.Sort(names)

	isNoswap := NoswapLookup(openMountinfo)

	out := []FileInfo{}
	for _, name := range names {
		if credential.ValidateName(name) != nil {
			continue
		}
		fi, err := root.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // vanished meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list credstore: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		id, _ := idOf(fi)
		kind := dirKind
		if id.dev != dirID.dev {
			// A file bind-mounted into the store is on another
			// filesystem. It was a regular file at Lstat; statfs follows
			// a symlink swapped in since, which at worst mislabels it.
			if kind, err = statfsKind(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("list credstore: %w", err)
			}
		}
		info := FileInfo{Name: name, Size: fi.Size(), Mode: fi.Mode().Perm(), Filesystem: kind}
		info.Security = Rate(info.Mode, kind, func() bool { return isNoswap(id.dev) })
		out = append(out, info)
	}
	return out, nil
}

// Rate rates a credential file with permission bits perm on a filesystem
// of type kind as `systemd-creds list` does: Insecure with any permission
// besides the owner's read bit, Secure on ramfs or on tmpfs whose mount
// has noswap (asked only then), Weak otherwise.
func Rate(perm fs.FileMode, kind Kind, noswap func() bool) Security {
	switch {
	case perm&0o377 != 0:
		return Insecure
	case kind == Ramfs, kind == Tmpfs && noswap():
		return Secure
	}
	return Weak
}

// NoswapLookup returns a function reporting whether the mount of a device
// has the noswap option, by the rule of systemd-creds (the first
// mountinfo line with the device's MAJOR:MINOR; per-mount or superblock
// options; any failure counts as no). It reads the mountinfo open returns
// once per device asked about. It is not safe for concurrent use.
func NoswapLookup(open func() (io.ReadCloser, error)) func(dev uint64) bool {
	byDev := map[uint64]bool{}
	return func(dev uint64) bool {
		v, ok := byDev[dev]
		if !ok {
			v = readNoswap(open, dev)
			byDev[dev] = v
		}
		return v
	}
}

// readNoswap reports whether mountinfo says dev's mount has noswap. Any
// failure counts as no, the safe answer for a rating.
func readNoswap(open func() (io.ReadCloser, error), dev uint64) bool {
	r, err := open()
	if err != nil {
		return false
	}
	defer r.Close()
	v, err := mountNoswap(r, dev)
	return err == nil && v
}

// mountNoswap reads /proc/self/mountinfo (proc(5)) from r and reports
// whether the first mount of device dev lists the noswap option, among the
// per-mount or the superblock options. Like libmount's
// mnt_table_find_devno, which systemd-creds uses, it takes the first line
// whose MAJOR:MINOR matches.
func mountNoswap(r io.Reader, dev uint64) (bool, error) {
	major, minor := devMajorMinor(dev)
	want := strconv.FormatUint(major, 10) + ":" + strconv.FormatUint(minor, 10)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[2] != want {
			continue
		}
		sep := -1
		if len(f) > 6 {
			sep = slices.Index(f[6:], "-")
		}
		if sep < 0 || 6+sep+3 >= len(f) {
			return false, fmt.Errorf("malformed mountinfo line for %s", want)
		}
		super := f[6+sep+3]
		return hasOption(f[5], "noswap") || hasOption(super, "noswap"), nil
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return false, fmt.Errorf("no mount of device %s in mountinfo", want)
}

func hasOption(opts, name string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == name {
			return true
		}
	}
	return false
}

// devMajorMinor splits a Linux dev_t as glibc's gnu_dev_major and
// gnu_dev_minor do.
func devMajorMinor(dev uint64) (major, minor uint64) {
	major = (dev&0x00000000000fff00)>>8 | (dev&0xfffff00000000000)>>32
	minor = dev&0x00000000000000ff | (dev&0x00000ffffff00000)>>12
	return major, minor
}
