package main

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// attackerAPI is another local user's listener on the API socket path: a
// real Unix socket that answers like cloud-hypervisor and keeps every
// request body it is sent.
type attackerAPI struct {
	got syncBuffer
	srv *http.Server
}

func plantAttacker(t *testing.T, sock string) *attackerAPI {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	a := &attackerAPI{}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		a.got.Write([]byte(r.URL.Path + " " + string(b) + "\n"))
		w.WriteHeader(http.StatusNoContent)
	})}
	go a.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		a.srv.Shutdown(ctx)
	})
	return a
}

// TestFinding1CHAPIAttackerSocket is finding 1 of issue 17: `run --ch-api
// SOCK` sent vm.create, with every secret, to whoever listened at SOCK
// first. Three attacks, each with a real Unix socket: one planted at the
// path before run starts, a path in a folder anyone can write, and a
// listener that binds the path after run's check but before the
// hypervisor does (SO_PEERCRED shows it is not the hypervisor or its
// descendant). Each must fail with exit 1 and the attacker must receive
// nothing.
func TestFinding1CHAPIAttackerSocket(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	value := []byte("canary-" + rand.Text() + rand.Text())
	forms := canaryForms("api-key", value)
	runCH := func(t *testing.T, h *harness, tmp, sock string, child ...string) int {
		t.Helper()
		args := []string{"run", "--vm", "v", "--hypervisor", "cloud-hypervisor", "--ch-api", sock,
			"--cred", "api-key=file:" + secretFile(t, tmp, "api-key", value), "--runtime-dir", filepath.Join(tmp, "run"), "--"}
		args = append(args, self, helperMarker)
		args = append(args, child...)
		return h.run(append(args, "--api-socket", "path="+sock)...)
	}
	noLeak := func(t *testing.T, h *harness, a *attackerAPI, code int, want string) {
		t.Helper()
		if code != 1 {
			t.Errorf("exit %d, want 1; log %s", code, h.log.String())
		}
		if a != nil {
			if got := a.got.String(); got != "" {
				short := got[:min(len(got), 60)]
				t.Errorf("the attacker's socket received %d bytes (%q…); secret in it: %v", len(got), short, leaks(forms, []byte(got)))
			}
		}
		if all := h.log.String() + h.stderr.String(); !strings.Contains(all, want) {
			t.Errorf("the error does not say %q: %s", want, all)
		}
	}

	t.Run("socket planted before run", func(t *testing.T) {
		tmp := t.TempDir()
		sock := filepath.Join(tmp, "api.sock")
		a := plantAttacker(t, sock)
		h := newHarness(t)
		code := runCH(t, h, tmp, sock, "fake-ch")
		noLeak(t, h, a, code, "already exists")
	})

	t.Run("folder others can write", func(t *testing.T) {
		tmp := t.TempDir()
		shared := filepath.Join(tmp, "shared")
		if err := os.Mkdir(shared, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(shared, os.ModeSticky|0o777); err != nil {
			t.Fatal(err)
		}
		h := newHarness(t)
		code := runCH(t, h, tmp, filepath.Join(shared, "api.sock"), "fake-ch")
		noLeak(t, h, nil, code, "other users can create the socket first")
	})

	t.Run("listener that is not the hypervisor", func(t *testing.T) {
		tmp := t.TempDir()
		sock := filepath.Join(tmp, "api.sock")
		h := newHarness(t)
		// The stand-in hypervisor prints "ready" and never listens; the
		// attacker binds the path the moment it has started.
		var a *attackerAPI
		planted := make(chan struct{})
		go func() {
			defer close(planted)
			for range 1000 {
				if strings.Contains(h.stdout.String(), "ready") {
					a = plantAttacker(t, sock)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		code := runCH(t, h, tmp, sock, "wait-term")
		<-planted
		if a == nil {
			t.Fatal("the stand-in hypervisor never started")
		}
		noLeak(t, h, a, code, "not the hypervisor")
	})
}
