package channel

import (
	"fmt"
	"net"

	"github.com/mdlayher/vsock"
)

// The only code in this package that touches AF_VSOCK. It stays a thin
// wrapper returning a net.Listener, so the server is tested over Unix
// sockets; the AF_VSOCK path runs in the QEMU suite.

// listenVsock binds an AF_VSOCK stream socket and returns it with the port
// it is bound to. ListenContextID rather than Listen: Listen asks
// /dev/vsock for the local CID, which can briefly read back as
// 0xFFFFFFFF (canonical/lxd#12404), and the host wants CID ANY anyway.
func listenVsock(cid, port uint32) (net.Listener, uint32, error) {
	l, err := vsock.ListenContextID(cid, port, nil)
	if err != nil {
		return nil, 0, err
	}
	a, ok := l.Addr().(*vsock.Addr)
	if !ok {
		l.Close()
		return nil, 0, fmt.Errorf("vsock listener has address type %T", l.Addr())
	}
	return l, a.Port, nil
}

// VsockPeerCID returns the context ID of an AF_VSOCK connection's peer, and
// false for any other connection. On vhost-vsock the host kernel fills it
// in from the device's guest CID, so a guest cannot forge it.
func VsockPeerCID(c net.Conn) (uint32, bool) {
	a, ok := c.RemoteAddr().(*vsock.Addr)
	if !ok {
		return 0, false
	}
	return a.ContextID, true
}
