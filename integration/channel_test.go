package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/vsocknotify"
)

// shmDir is a temporary folder on tmpfs, where the agent accepts a
// credstore.
func shmDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "vmcred-integration-")
	if err != nil {
		t.Skipf("no writable /dev/shm tmpfs here: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// shortDir is a temporary folder with a short path: a Unix socket path
// must fit in 107 bytes, which t.TempDir's long names can break.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// lockedBuffer is a bytes.Buffer a child's output copier and the test
// may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// background starts a built binary and returns it; the test's cleanup
// kills it if it still runs.
func background(t *testing.T, bin string, env []string, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, out
}

func waitForSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exitCode(t *testing.T, cmd *exec.Cmd, within time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running after %v", filepath.Base(cmd.Path), within)
	}
	return -1
}

// TestWaitTimeout: no report comes; wait exits 4.
func TestWaitTimeout(t *testing.T) {
	r := run(t, built.host, nil, "wait", "--vm", "nobody", "--status-dir", t.TempDir(), "--timeout", "200ms")
	if r.code != 4 {
		t.Errorf("wait: exit %d, want 4: %s", r.code, r.stderr)
	}
}

// TestNotifySenderToServer: the guest's vsock-stream notify sender (here
// over a Unix socket) and `vmcred-host serve` agree: serve logs PID 1's
// READY=1 and STATUS=, and the sender returns once serve closed. It
// records no readiness: only a session the host dialed does.
func TestNotifySenderToServer(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "vm.vsock_9999")
	serve, out := background(t, built.host, nil, "serve", "--vm", "vm", "--listen", "unix:"+sock)
	waitForSocket(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := vsocknotify.Notify(ctx, "unix:"+sock, []byte("READY=1\nSTATUS=Ready."), nil); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !strings.Contains(out.String(), `"ready": true`) && !strings.Contains(out.String(), "ready=true"); time.Sleep(10 * time.Millisecond) {
	}
	serve.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, serve, 10*time.Second); code != 0 {
		t.Errorf("serve exit %d:\n%s", code, out)
	}
	if !strings.Contains(out.String(), "guest systemd: notify message") || !strings.Contains(out.String(), "Ready.") {
		t.Errorf("serve did not log the message:\n%s", out)
	}
	// The sender half-closes and waits; serve must end the message at that
	// EOF, not wait out its idle timeout (systemd ≥ 256 blocks until then).
	if !strings.Contains(out.String(), `"ended_by": "eof"`) && !strings.Contains(out.String(), "ended_by=eof") {
		t.Errorf("serve did not end the notify message at the sender's EOF:\n%s", out)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("serve left its socket: %v", err)
	}
}
