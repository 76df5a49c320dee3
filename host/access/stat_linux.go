package access

import (
	"fmt"
	"os"
	"syscall"
)

// OSStat is the StatFunc for the running Linux system: lstat, the symlink
// target for symlinks, and whether a system.posix_acl_access xattr (a POSIX
// ACL) is present.
func OSStat(path string) (Info, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return Info{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Info{}, fmt.Errorf("lstat %s: no owner in %T", path, fi.Sys())
	}
	info := Info{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid}
	if fi.Mode()&os.ModeSymlink != 0 {
		info.Link, err = os.Readlink(path)
		return info, err
	}
	// Getxattr follows symlinks, which is why it runs only on the others.
	// Any error (no ACL, no xattr support) means no ACL to report.
	n, err := syscall.Getxattr(path, "system.posix_acl_access", nil)
	info.ACL = err == nil && n > 0
	return info, nil
}
