package launch

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// CH API defaults.
const (
	// DefaultSocketWait is how long CHBoot waits for the API socket.
	DefaultSocketWait = 30 * time.Second
	// DefaultRequestTimeout bounds each API request.
	DefaultRequestTimeout = 30 * time.Second
	// maxResponse caps the response body read for an error message.
	maxResponse = 4096
	// pollInterval is how often CHBoot tries the socket.
	pollInterval = 20 * time.Millisecond
)

// ErrChildExited means the child exited before its API socket answered.
var ErrChildExited = errors.New("hypervisor exited before its api socket answered")

// CHBoot drives cloud-hypervisor's REST API on the Unix socket: it waits
// until the socket accepts connections (or the child exits, or wait
// passes), then sends PUT /api/v1/vm.create with body and PUT
// /api/v1/vm.boot, each expecting a 2xx answer. It is CHBootWith with the
// default CHOptions.
//
// body holds secrets: it is sent only over the socket, and only after the
// process listening there proved to be the hypervisor (see CHOptions), and
// it never appears in errors, which quote at most the server's answer
// with every OEM string of body redacted.
func CHBoot(ctx context.Context, socket string, body credential.Secret, exited <-chan struct{}, wait time.Duration) error {
	return CHBootWith(ctx, socket, body, exited, CHOptions{Wait: wait})
}

// CHOptions tune CHBootWith.
type CHOptions struct {
	// Wait bounds the wait for the socket (DefaultSocketWait when 0).
	Wait time.Duration
	// PeerPID is the process the API socket must belong to: the listener,
	// as SO_PEERCRED reports it, must be this process or one of its
	// descendants. 0 means the child Run started (ChildPID(ctx)) when ctx
	// has one, else this process.
	PeerPID int
	// PeerUIDs also accept a listener of one of these uids that is not a
	// descendant of PeerPID (a hypervisor started by another launcher as a
	// dedicated user). None by default: another local user who binds the
	// socket path first (finding 1 of issue 17) is never sent a byte.
	PeerUIDs []int
}

// ErrUnexpectedPeer means the process listening on the API socket is not
// the hypervisor CHBoot was started for.
var ErrUnexpectedPeer = errors.New("the api socket belongs to another process")

// CHBootWith is CHBoot with options. Every connection it makes is checked
// with SO_PEERCRED before a byte of body is written on it.
func CHBootWith(ctx context.Context, socket string, body credential.Secret, exited <-chan struct{}, opts CHOptions) error {
	wait := opts.Wait
	if wait <= 0 {
		wait = DefaultSocketWait
	}
	if opts.PeerPID == 0 {
		opts.PeerPID = os.Getpid()
		if pid, ok := ChildPID(ctx); ok {
			opts.PeerPID = pid
		}
	}
	if err := waitSocket(ctx, socket, exited, wait); err != nil {
		return err
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, err
		}
		if err := checkPeer(c, socket, opts); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	if err := put(ctx, dial, "/api/v1/vm.create", body); err != nil {
		return err
	}
	return put(ctx, dial, "/api/v1/vm.boot", credential.Secret{})
}

// ErrUnsafeSocketPath means the API socket's path could be taken by
// another local user before the hypervisor binds it.
var ErrUnsafeSocketPath = errors.New("unsafe api socket path")

// CheckAPISocketPath refuses a path for cloud-hypervisor's API socket that
// another local user could bind first, and so receive vm.create with every
// secret: a path that already exists (a socket planted there answers
// before the hypervisor's), and one whose folder is not owned by this user
// or root or lets group or others write (/tmp included: its sticky bit
// does not stop anyone from creating a new name). Call it before starting
// the hypervisor; CHBoot's peer check covers the moment between.
func CheckAPISocketPath(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("--ch-api %s: %w: it already exists (a stale socket from an earlier run, or someone else's: remove it if it is yours)", path, ErrUnsafeSocketPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--ch-api %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--ch-api %s: folder: %w", path, err)
	}
	uid, ok := ownerUID(fi)
	switch {
	case !ok:
		return fmt.Errorf("--ch-api %s: %w: cannot tell who owns %s", path, ErrUnsafeSocketPath, dir)
	case uid != 0 && uid != os.Geteuid():
		return fmt.Errorf("--ch-api %s: %w: its folder %s belongs to uid %d, not to this user (uid %d) or root", path, ErrUnsafeSocketPath, dir, uid, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("--ch-api %s: %w: its folder %s has mode %#o: other users can create the socket first (use a folder of your own, e.g. $XDG_RUNTIME_DIR or a RuntimeDirectory=)", path, ErrUnsafeSocketPath, dir, fi.Mode().Perm())
	}
	return nil
}

func waitSocket(ctx context.Context, socket string, exited <-chan struct{}, wait time.Duration) error {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := d.DialContext(dctx, "unix", socket)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for cloud-hypervisor api socket %s: %w", socket, ctx.Err())
		case <-exited:
			return fmt.Errorf("cloud-hypervisor api socket %s: %w", socket, ErrChildExited)
		case <-deadline.C:
			return fmt.Errorf("cloud-hypervisor api socket %s did not answer within %v (is --api-socket path=%s on its command line?): %w", socket, wait, socket, last)
		case <-tick.C:
		}
	}
}

// put sends one request on a new connection, which it closes. It writes
// the request itself rather than through net/http's client: the client
// copies the body through its buffers (a bufio.Writer holding the first
// 4 KiB, io.Copy's body-sized buffer), which are freed without being
// cleared and kept the OEM strings in run's memory after the hand-over
// (issue 17, finding 6). Here the header and the body each go to the
// socket in one write from buffers the caller clears.
func put(ctx context.Context, dial func(context.Context) (net.Conn, error), path string, body credential.Secret) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultRequestTimeout)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	hdr := "PUT " + path + " HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
	if body.Len() > 0 {
		hdr += "Content-Type: application/json\r\n"
	}
	hdr += fmt.Sprintf("Content-Length: %d\r\n\r\n", body.Len())
	_, err = io.WriteString(c, hdr)
	if err == nil && body.Len() > 0 {
		_, err = c.Write(body.Reveal())
	}
	if err != nil {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %w", path, ctxErr(ctx, err))
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %w", path, ctxErr(ctx, err))
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %s: %s", path, resp.Status, redact(msg, body))
	}
	return nil
}

// ctxErr is ctx's error when ctx ended (the deadline set on the
// connection then caused err), else err.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

// redact returns the server's answer for an error message with anything
// that looks like part of the request body removed: the answer is cut at
// the first byte that is not printable ASCII, and if any 16-byte window of
// it occurs in the request body, it is replaced by a note.
func redact(msg []byte, body credential.Secret) string {
	msg = bytes.TrimSpace(msg)
	for i, c := range msg {
		if c < 0x20 || c > 0x7e {
			msg = msg[:i]
			break
		}
	}
	const window = 16
	b := body.Reveal()
	for i := 0; i+window <= len(msg); i++ {
		if bytes.Contains(b, msg[i:i+window]) {
			return fmt.Sprintf("(%d-byte answer not shown: it quotes the request)", len(msg))
		}
	}
	if len(msg) > 300 {
		msg = append(msg[:300:300], "…"...)
	}
	return string(msg)
}
