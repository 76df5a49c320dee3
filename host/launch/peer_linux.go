//go:build linux

package launch

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// checkPeer asks the kernel who listens on c's other end (SO_PEERCRED:
// the credentials of the process that called listen) and refuses anyone
// but opts.PeerPID, its descendants and opts.PeerUIDs.
func checkPeer(c net.Conn, socket string, opts CHOptions) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("cloud-hypervisor api socket %s: not a unix connection", socket)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("cloud-hypervisor api socket %s: %w", socket, err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("cloud-hypervisor api socket %s: %w", socket, err)
	}
	if credErr != nil {
		return fmt.Errorf("cloud-hypervisor api socket %s: SO_PEERCRED: %w", socket, credErr)
	}
	if descends(int(cred.Pid), opts.PeerPID) || slices.Contains(opts.PeerUIDs, int(cred.Uid)) {
		return nil
	}
	return fmt.Errorf("cloud-hypervisor api socket %s: %w: pid %d (uid %d) listens there, not the hypervisor (pid %d) or a process it started; nothing was sent", socket, ErrUnexpectedPeer, cred.Pid, cred.Uid, opts.PeerPID)
}

// descends reports whether pid is ancestor or one of its descendants,
// following parent pids in /proc.
func descends(pid, ancestor int) bool {
	for range 4096 {
		if pid == ancestor {
			return true
		}
		if pid <= 1 {
			return false
		}
		ppid, err := parentPID(pid)
		if err != nil {
			return false
		}
		pid = ppid
	}
	return false
}

// parentPID reads the parent pid from /proc/PID/stat: "PID (COMM) STATE
// PPID …", where COMM may hold spaces and parentheses, so the fields are
// counted after the last ')'.
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.Atoi(string(f[1]))
}

// ownerUID is the owner of the file fi describes.
func ownerUID(fi os.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
