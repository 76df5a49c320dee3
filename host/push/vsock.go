package push

import (
	"context"
	"net"

	"github.com/mdlayher/vsock"
)

// dialVsock is the only code in this package that touches AF_VSOCK: a
// thin wrapper returning a net.Conn, so everything else is tested over
// Unix sockets; the AF_VSOCK path runs in the QEMU suite (vsock loopback
// inside the guest), never on a developer's or CI's host.
func dialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	return vsock.DialContext(ctx, cid, port, nil)
}
