// Package vsocknotify sends sd_notify messages to a vsock NOTIFY_SOCKET
// (an agent started outside systemd, e.g. from an initramfs, next to PID
// 1's vmm.notify_socket), which go-systemd's daemon.SdNotify cannot: it
// only speaks unixgram. The transports are net.Conn: Dial opens a Unix
// stream or, through github.com/mdlayher/vsock, an AF_VSOCK stream; tests
// use Unix sockets. Guest packages only. It does not log.
package vsocknotify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/notify"
)

// ErrNotifyReply is returned when the receiver sent data back instead of
// closing: systemd's sd_notify treats that as EPROTO too.
var ErrNotifyReply = errors.New("notify receiver sent data back")

// IsVsockNotifySocket reports whether a $NOTIFY_SOCKET value names an
// AF_VSOCK socket (systemd ≥ 253 accepts vsock:, vsock-stream:,
// vsock-seqpacket: and vsock-dgram:), which go-systemd's daemon.SdNotify
// would mistake for a file name.
func IsVsockNotifySocket(s string) bool { return strings.HasPrefix(s, "vsock") }

// DefaultNotifyTimeout bounds one Notify call when ctx has no deadline.
const DefaultNotifyTimeout = 5 * time.Second

// Notify sends one sd_notify message (notify.Format's output) to
// socket, a $NOTIFY_SOCKET value of the form vsock-stream:CID:PORT or
// vsock:CID:PORT, the way systemd ≥ 256's sd_notify does over a stream:
// connect, write the whole message, half-close, and wait for the
// receiver to close (it must read to EOF first; a receiver that never
// closes costs at most ctx's deadline, or DefaultNotifyTimeout). Plain
// vsock: is sent as a stream too: mdlayher/vsock has no datagram socket,
// and the hypervisors vmcred serves (cloud-hypervisor, Firecracker) have
// none either. unix:PATH is accepted for tests; a bare path or @name,
// systemd's own form, is go-systemd's job. dial is Dial when nil.
func Notify(ctx context.Context, socket string, msg []byte, dial DialFunc) error {
	a, err := address.Parse(socket)
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	switch a.Kind {
	case address.Vsock, address.VsockStream, address.Unix:
	default:
		return fmt.Errorf("notify socket %s: only stream sockets are supported", a)
	}
	if len(msg) == 0 || len(msg) > notify.MaxSize {
		return fmt.Errorf("notify %s: message of %d bytes, want 1 to %d", a, len(msg), notify.MaxSize)
	}
	if dial == nil {
		dial = Dial
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultNotifyTimeout)
		defer cancel()
	}
	conn, err := dial(ctx, a)
	if err != nil {
		return fmt.Errorf("notify %s: %w", a, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	dl, _ := ctx.Deadline()
	if err := conn.SetDeadline(dl); err != nil {
		return fmt.Errorf("notify %s: %w", a, err)
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("notify %s: %w", a, err)
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("notify %s: %T cannot half-close", a, conn)
	}
	if err := cw.CloseWrite(); err != nil {
		return fmt.Errorf("notify %s: half-close: %w", a, err)
	}
	var b [1]byte
	n, err := conn.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("notify %s: %w", a, ErrNotifyReply)
	case errors.Is(err, io.EOF):
		return nil
	case err == nil:
		return fmt.Errorf("notify %s: %w", a, ErrNotifyReply)
	}
	if cerr := ctx.Err(); cerr != nil {
		err = cerr
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		// The connection's deadline is ctx's; it may fire first.
		err = context.DeadlineExceeded
	}
	return fmt.Errorf("notify %s: waiting for the receiver to close: %w", a, err)
}
