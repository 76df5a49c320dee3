package channel

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/vmcred/vmcred/shared/address"
)

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vm.vsock_1234")
	a := address.Address{Kind: address.Unix, Path: path}
	l, err := Listen(a)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, err %v; want a 0600 socket", fi.Mode(), err)
	}
	if _, err := Listen(a); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("second Listen: %v, want a refusal", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("folder holds %d entries, want only the socket (the private bind folder is gone)", len(ents))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}

	// A stale socket (its server was killed) is replaced.
	stale, err := Listen(a)
	if err != nil {
		t.Fatal(err)
	}
	stale.Listener.(*unixListener).UnixListener.Close()
	l, err = Listen(a)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l.Close()

	// Anything else is left alone.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(a); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
}

// TestFinding2BindChmodRace (issue 17, finding 2): under umask 000 the old
// listener was bound world-connectable and chmod-ed after; a local user
// connected in that window. Now the socket is bound inside a fresh 0700
// folder: while Listen runs, a racer that tries every name in the folder
// as fast as it can never connects to anything but the final 0600 socket
// after its chmod, and then only as the same user (the test runs as one
// user, so it checks the mode instead: no connection ever reaches a
// socket whose mode allows others).
func TestFinding2BindChmodRace(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var loose atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				p := filepath.Join(dir, e.Name())
				if e.IsDir() {
					// The private folder: another user could not enter
					// it; check that it is 0700 whenever seen.
					if fi, err := os.Lstat(p); err == nil && fi.Mode().Perm() != 0o700 {
						loose.Add(1)
					}
					continue
				}
				if fi, err := os.Lstat(p); err == nil && fi.Mode().Type() == os.ModeSocket && fi.Mode().Perm()&0o077 != 0 {
					loose.Add(1)
				}
			}
		}
	}()
	for i := range 200 {
		l, err := Listen(address.Address{Kind: address.Unix, Path: filepath.Join(dir, "s"+strings.Repeat("x", i%5))})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	stop.Store(true)
	wg.Wait()
	if n := loose.Load(); n > 0 {
		t.Errorf("%d times a socket or bind folder in a 0777 folder under umask 000 was open to others", n)
	}
}

// TestFinding3AbstractRefused (issue 17, finding 3): an abstract socket
// has no permissions; the listener refuses it.
func TestFinding3AbstractRefused(t *testing.T) {
	_, err := Listen(address.Address{Kind: address.Unix, Path: "@vmcred-test-abstract"})
	if !errors.Is(err, ErrAbstract) {
		t.Fatalf("Listen(unix:@…) = %v, want ErrAbstract", err)
	}
	if c, err := net.Dial("unix", "@vmcred-test-abstract"); err == nil {
		c.Close()
		t.Error("something listens on the abstract name")
	}
}

// TestListenUnixErrorNamesThePath: a bind that fails names the path asked
// for, never the temporary name it binds first.
func TestListenUnixErrorNamesThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "vm.vsock_1234")
	_, err := Listen(address.Address{Kind: address.Unix, Path: path})
	if err == nil {
		t.Fatal("Listen in a missing folder succeeded")
	}
	if !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), ".vmcred-") {
		t.Errorf("error %q: want %s and no temporary name", err, path)
	}
}
