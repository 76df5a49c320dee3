//go:build !linux

package debug

import "io/fs"

// ownerUID is not known on this system.
func ownerUID(fs.FileInfo) (int, bool) { return 0, false }
