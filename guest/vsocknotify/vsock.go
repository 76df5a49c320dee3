package vsocknotify

import (
	"context"
	"fmt"
	"net"

	"github.com/vmcred/vmcred/shared/address"

	"github.com/mdlayher/vsock"
)

// dialVsock is the only code in this package that touches AF_VSOCK: a
// thin wrapper returning a net.Conn, so everything else is tested over
// Unix sockets; the AF_VSOCK path runs in the QEMU suite.
func dialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	return vsock.DialContext(ctx, cid, port, nil)
}

// DialFunc opens a byte stream to a.
type DialFunc func(ctx context.Context, a address.Address) (net.Conn, error)

// Dial opens a stream to a: a Unix stream socket for unix:PATH, an AF_VSOCK
// stream for vsock: and vsock-stream: addresses.
func Dial(ctx context.Context, a address.Address) (net.Conn, error) {
	if err := a.CheckDial(); err != nil {
		return nil, err
	}
	if a.IsVsock() {
		return dialVsock(ctx, a.CID, a.Port)
	}
	if a.Kind != address.Unix {
		return nil, fmt.Errorf("notify socket %s: not a vsock or unix address", a)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", a.Path)
}
