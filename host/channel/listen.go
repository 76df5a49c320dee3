package channel

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vmcred/vmcred/shared/address"
)

// ErrAbstract: an abstract Unix socket (unix:@name) has no owner and no
// mode, so any local user could connect; it is refused.
var ErrAbstract = errors.New("an abstract Unix socket (unix:@name) has no permissions; use a socket file")

// Listener is a bound socket and the address it is bound to.
type Listener struct {
	net.Listener
	// Bound is the bound address: for AF_VSOCK with port 0, the port the
	// kernel picked.
	Bound address.Address
}

// Listen binds a. For a vsock address it opens an AF_VSOCK stream socket
// through github.com/mdlayher/vsock, bound to a's CID (CIDAny binds every
// local CID, as systemd-vmspawn does) and port (0: any free port; the one
// picked is in Bound). For unix:PATH it creates a Unix stream socket that
// only this user can connect to: it binds inside a new private folder
// (0700, next to PATH), sets mode 0600 and renames the socket to PATH, so
// no other user can reach it before the chmod, whatever the umask
// (issue 17, finding 2). A stale socket at PATH (one nobody listens on)
// is replaced; any other file there is refused. An abstract name
// (unix:@name) has no permissions at all and is refused (finding 3).
// Closing the listener removes PATH.
func Listen(a address.Address) (*Listener, error) {
	if err := a.CheckListen(); err != nil {
		return nil, err
	}
	if a.IsVsock() {
		l, port, err := listenVsock(a.CID, a.Port)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		b := a
		b.Port = port
		return &Listener{Listener: l, Bound: b}, nil
	}
	l, err := listenUnix(a.Path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a, err)
	}
	return &Listener{Listener: l, Bound: a}, nil
}

// unixListener removes its path on Close: the net package would remove
// the temporary name it was bound to, which no longer exists.
type unixListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

// Addr is the socket's final path, not the temporary name it was bound
// to.
func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = rerr
		}
	})
	return err
}

func listenUnix(path string) (net.Listener, error) {
	if strings.HasPrefix(path, "@") {
		return nil, ErrAbstract
	}
	if err := clearStale(path); err != nil {
		return nil, err
	}
	priv := filepath.Join(filepath.Dir(path), ".vmcred-"+rand.Text()[:10])
	tmp := filepath.Join(priv, "s")
	if len(tmp) > address.MaxUnixPathLen {
		return nil, fmt.Errorf("%s: the private folder's socket name %s would be over the %d-byte sun_path limit; use a shorter path", path, tmp, address.MaxUnixPathLen)
	}
	if err := os.Mkdir(priv, 0o700); err != nil {
		// The error would name the private folder; the caller names path.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("make a private folder beside it: %w", err)
	}
	defer os.Remove(priv)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		// net's error names the temporary file; the caller names path.
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err
		}
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		l.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

// clearStale removes a socket at path that nobody listens on (left by a
// server that was killed), and refuses anything else.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another server is listening there", path)
	}
	return os.Remove(path)
}
