package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/mdlayher/vsock"
	"github.com/vmcred/vmcred/shared/address"
)

// Listen opens the agent's listener on a, after CheckListen: AF_VSOCK
// (through github.com/mdlayher/vsock) on a privileged port, where a
// second binder gets EADDRINUSE and an unprivileged one EACCES; or, for
// tests and simulated VMs, a Unix socket (mode 0600) in a folder of ours
// that no other user can write, so nobody can put another socket in its
// place. A peer that connects before the chmod learns nothing: the agent
// receives secrets, it never sends them, and it checks every manifest's
// signature.
func Listen(a address.Address) (net.Listener, error) {
	if err := CheckListen(a); err != nil {
		return nil, err
	}
	if a.IsVsock() {
		// ListenContextID, not Listen: Listen asks /dev/vsock for the
		// local CID, and the unit's DevicePolicy=closed refuses to open
		// /dev/vsock (an AF_VSOCK socket needs no device node).
		l, err := vsock.ListenContextID(a.CID, a.Port, nil)
		if err != nil {
			if errors.Is(err, syscall.EACCES) {
				return nil, fmt.Errorf("listen %s: %w (binding a vsock port up to %d needs CAP_NET_BIND_SERVICE: run the agent as root)", a, err, address.PrivilegedPorts)
			}
			return nil, fmt.Errorf("listen %s: %w", a, err)
		}
		return l, nil
	}
	dir := filepath.Dir(a.Path)
	st, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	if !st.IsDir() || st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("listen %s: folder %s has mode %04o: others could replace the socket; put it in a folder only its owner can write (0700 or 0755)", a, dir, st.Mode().Perm())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("listen %s: folder %s belongs to uid %d, not to this process (uid %d)", a, dir, sys.Uid, os.Geteuid())
	}
	if fi, err := os.Lstat(a.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		// A socket left by an earlier run in our own folder is replaced;
		// one that answers belongs to a running agent.
		if c, err := net.Dial("unix", a.Path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another agent is listening there", a)
		}
		_ = os.Remove(a.Path)
	}
	l, err := net.Listen("unix", a.Path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	if err := os.Chmod(a.Path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	return l, nil
}

// PeerCID returns an AcceptPeer function that closes AF_VSOCK connections
// from any context ID but cid (address.CIDHost, 2, for the host; 1 for a
// test that dials vsock loopback inside the guest). Unix connections pass:
// their folder's permissions are their gate.
func PeerCID(cid uint32) func(net.Conn) error {
	return func(c net.Conn) error {
		va, ok := c.RemoteAddr().(*vsock.Addr)
		if !ok {
			return nil
		}
		if va.ContextID != cid {
			return fmt.Errorf("connection from vsock CID %d, want %d", va.ContextID, cid)
		}
		return nil
	}
}
