package credstore

import (
	"errors"
	"slices"
)

// ErrExchangeUnsupported is wrapped by Rotate's error when the store's
// filesystem cannot exchange two directories atomically
// (renameat2(RENAME_EXCHANGE): tmpfs and the usual disk filesystems can;
// ramfs only from Linux 6.0). Nothing was changed; Replace still works, one
// file at a time.
var ErrExchangeUnsupported = errors.New("the filesystem cannot exchange directories atomically (renameat2 RENAME_EXCHANGE)")

// Rotation says what Rotate did. Every list holds credential names, sorted.
type Rotation struct {
	// Added lists delivered names the store did not have.
	Added []string `json:"added,omitempty"`
	// Changed lists delivered names whose value differs from the file
	// vmcred had written (or whose file vmcred had not written: after a
	// lost state file a rotation rewrites, and reports, every name).
	Changed []string `json:"changed,omitempty"`
	// Unchanged lists delivered names whose value is the same: the very
	// file (same inode, same bytes) is in the new store.
	Unchanged []string `json:"unchanged,omitempty"`
	// Removed lists files vmcred wrote whose names are no longer
	// delivered; they are not in the new store.
	Removed []string `json:"removed,omitempty"`
	// Kept lists names a previous run wrote, no longer delivered, whose
	// file was carried over untouched because it is no longer the one
	// vmcred wrote (an admin replaced it).
	Kept []string `json:"kept,omitempty"`
	// Foreign counts entries of the store vmcred never wrote (an admin's
	// files, symlinks, sockets): carried over as they were, same inode.
	Foreign int `json:"foreign,omitempty"`
}

// Changes returns the names whose consumers see something new: Added,
// Changed and Removed, sorted. These are the credentials whose consumers
// the agent restarts or reloads; Unchanged and Kept ones are left alone.
func (r Rotation) Changes() []string {
	out := slices.Concat(r.Added, r.Changed, r.Removed)
	slices.Sort(out)
	return slices.Compact(out)
}
