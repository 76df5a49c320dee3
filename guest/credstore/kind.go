package credstore

import "fmt"

// Kind is a filesystem type as statfs(2) reports it in f_type (the magic
// numbers of linux/magic.h). Only [Tmpfs] and [Ramfs] count as in-memory;
// any other value is printed as its magic number.
type Kind uint32

// Filesystem magics from linux/magic.h.
const (
	// Tmpfs is TMPFS_MAGIC. tmpfs lives in memory but may be swapped out
	// unless mounted with noswap (Linux 6.3+).
	Tmpfs Kind = 0x01021994
	// Ramfs is RAMFS_MAGIC. ramfs is never swapped out.
	Ramfs Kind = 0x858458f6
)

// InMemory reports whether k is tmpfs or ramfs, whose contents do not
// survive a reboot.
func (k Kind) InMemory() bool { return k == Tmpfs || k == Ramfs }

// String returns "tmpfs", "ramfs" or "magic 0x…".
func (k Kind) String() string {
	switch k {
	case Tmpfs:
		return "tmpfs"
	case Ramfs:
		return "ramfs"
	}
	return fmt.Sprintf("magic %#x", uint32(k))
}

// MarshalText implements encoding.TextMarshaler, so JSON shows the String
// form rather than a number.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// FilesystemKind returns the type of the filesystem that holds path,
// following symlinks.
func FilesystemKind(path string) (Kind, error) { return statfsKind(path) }
