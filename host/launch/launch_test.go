package launch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/shared/credential"
)

// fakeAPI serves handler on a Unix socket in a temp dir and records the
// requests as "METHOD PATH BODY".
func fakeAPI(t *testing.T, handler func(w http.ResponseWriter, r *http.Request, body []byte)) (string, *[]string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.Path+" "+string(b))
		handler(w, r, b)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, &got
}

func TestCHBoot(t *testing.T) {
	sock, got := fakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ []byte) { w.WriteHeader(http.StatusNoContent) })
	body := credential.NewSecret([]byte(`{"platform":{"oem_strings":["x"]}}`))
	if err := CHBoot(context.Background(), sock, body, make(chan struct{}), time.Second); err != nil {
		t.Fatal(err)
	}
	want := []string{`PUT /api/v1/vm.create {"platform":{"oem_strings":["x"]}}`, "PUT /api/v1/vm.boot "}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

func TestCHBootErrorRedactsTheBody(t *testing.T) {
	secret := "io.vmcred.credential.binary:k=c2VjcmV0LXNlY3JldC1zZWNyZXQ="
	sock, _ := fakeAPI(t, func(w http.ResponseWriter, _ *http.Request, b []byte) {
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("Error creating VM: bad config " + string(b)))
	})
	body := credential.NewSecret([]byte(`{"platform":{"oem_strings":["` + secret + `"]}}`))
	err := CHBoot(context.Background(), sock, body, make(chan struct{}), time.Second)
	if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "vm.create") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "c2VjcmV0") {
		t.Errorf("error quotes the request: %v", err)
	}

	sock, _ = fakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte("InvalidPayload"))
	})
	err = CHBoot(context.Background(), sock, body, make(chan struct{}), time.Second)
	if err == nil || !strings.Contains(err.Error(), "InvalidPayload") {
		t.Errorf("a harmless answer should be shown: %v", err)
	}
}

func TestCHBootWaits(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "late.sock")
	exited := make(chan struct{})
	close(exited)
	err := CHBoot(context.Background(), sock, credential.Secret{}, exited, time.Second)
	if !errors.Is(err, ErrChildExited) {
		t.Errorf("child gone: err = %v", err)
	}
	start := time.Now()
	err = CHBoot(context.Background(), sock, credential.Secret{}, make(chan struct{}), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not answer within") || time.Since(start) > 5*time.Second {
		t.Errorf("timeout: err = %v after %v", err, time.Since(start))
	}
}

func TestRunForwardsSignalsAndStatus(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var out bytes.Buffer
	if err := Run(context.Background(), Config{Path: sh, Args: []string{"-c", "echo hi; exit 3"}, Stdout: &out, Signals: make(chan os.Signal)}); err == nil {
		t.Fatal("exit 3 gave no error")
	} else {
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 3 || out.String() != "hi\n" {
			t.Errorf("err %v, out %q", err, out.String())
		}
	}

	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	err = Run(context.Background(), Config{Path: sh, Args: []string{"-c", "trap 'exit 9' TERM; while :; do sleep 0.05; done"}, Signals: sigs})
	var ee *ExitError
	if !errors.As(err, &ee) || (ee.Code != 9 && ee.Code != 128+15) {
		t.Errorf("SIGTERM: err = %v", err)
	}

	// AfterStart failing stops the child and returns its error.
	boom := errors.New("boom")
	start := time.Now()
	err = Run(context.Background(), Config{Path: sh, Args: []string{"-c", "sleep 30"}, Signals: make(chan os.Signal),
		AfterStart: func(context.Context, <-chan struct{}) error { return boom }, KillGrace: time.Second})
	if !errors.Is(err, boom) || time.Since(start) > 10*time.Second {
		t.Errorf("AfterStart failure: err = %v after %v", err, time.Since(start))
	}
}

// TestCHBootPeerCheck: a listener that is neither the expected process
// nor its descendant is sent nothing, unless its uid is allowed.
func TestCHBootPeerCheck(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Skip("no sleep: ", err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	sock, got := fakeAPI(t, func(w http.ResponseWriter, _ *http.Request, _ []byte) { w.WriteHeader(http.StatusNoContent) })
	body := credential.NewSecret([]byte(`{"platform":{"oem_strings":["x"]}}`))
	err := CHBootWith(context.Background(), sock, body, make(chan struct{}), CHOptions{Wait: time.Second, PeerPID: sleep.Process.Pid})
	if !errors.Is(err, ErrUnexpectedPeer) || len(*got) != 0 {
		t.Fatalf("a listener outside the hypervisor's process tree: err %v, %d requests sent", err, len(*got))
	}
	err = CHBootWith(context.Background(), sock, body, make(chan struct{}), CHOptions{Wait: time.Second, PeerPID: sleep.Process.Pid, PeerUIDs: []int{os.Geteuid()}})
	if err != nil || len(*got) != 2 {
		t.Fatalf("an allowed uid: err %v, %d requests", err, len(*got))
	}
	// The default: this process and its descendants.
	if err := CHBoot(context.Background(), sock, body, make(chan struct{}), time.Second); err != nil {
		t.Fatal(err)
	}
	if !descends(sleep.Process.Pid, os.Getpid()) || descends(os.Getpid(), sleep.Process.Pid) {
		t.Error("descends got the process tree wrong")
	}
}

func TestCheckAPISocketPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := CheckAPISocketPath(filepath.Join(dir, "api.sock")); err != nil {
		t.Errorf("a fresh path in a private folder: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "old.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckAPISocketPath(filepath.Join(dir, "old.sock")); !errors.Is(err, ErrUnsafeSocketPath) {
		t.Errorf("an existing path: %v", err)
	}
	if err := os.Chmod(dir, 0o770); err != nil {
		t.Fatal(err)
	}
	if err := CheckAPISocketPath(filepath.Join(dir, "api.sock")); !errors.Is(err, ErrUnsafeSocketPath) {
		t.Errorf("a group-writable folder: %v", err)
	}
}
