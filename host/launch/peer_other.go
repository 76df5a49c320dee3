//go:build !linux

package launch

import (
	"fmt"
	"net"
	"os"
	"runtime"
)

// checkPeer cannot ask who listens on this system, so it refuses: the
// request carries every secret.
func checkPeer(_ net.Conn, socket string, _ CHOptions) error {
	return fmt.Errorf("cloud-hypervisor api socket %s: %w: cannot check the listener on %s", socket, ErrUnexpectedPeer, runtime.GOOS)
}

// ownerUID is not known on this system.
func ownerUID(os.FileInfo) (int, bool) { return 0, false }
