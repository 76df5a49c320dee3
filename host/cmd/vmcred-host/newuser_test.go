package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap/zapcore"

	"github.com/vmcred/vmcred/host/access"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
)

// TestPackWarnings: what pack accepts but is probably a mistake is said,
// once, as a warning; pack still succeeds.
func TestPackWarnings(t *testing.T) {
	tmp := t.TempDir()
	empty := secretFile(t, tmp, "empty", nil)
	emptyDir := filepath.Join(tmp, "emptydir")
	if err := os.Mkdir(emptyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"empty secret file", []string{"--hypervisor", "qemu", "--cred", "k=file:" + empty}, `credential "k": ` + empty + " is empty (0 bytes)"},
		{"no credentials in the sources", []string{"--hypervisor", "qemu", "--cred-dir", emptyDir}, "the sources hold no credentials"},
		{"no source flag", []string{"--hypervisor", "qemu"}, "no credentials to pack"},
		{"--ch-api without --ch-config", []string{"--hypervisor", "cloud-hypervisor", "--ch-api", filepath.Join(tmp, "api.sock"), "--static", "a=b"}, "--ch-api without --ch-config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			args := append([]string{"pack", "--vm", "v", "--runtime-dir", filepath.Join(t.TempDir(), "run")}, tt.args...)
			if code := h.run(args...); code != 0 {
				t.Fatalf("exit %d: %s", code, h.log.String())
			}
			if n := strings.Count(h.log.String(), tt.want); n != 1 {
				t.Errorf("log says %q %d times, want once:\n%s", tt.want, n, h.log.String())
			}
		})
	}
}

// TestKeygenMakesTheFolder: keygen --out keys/host makes keys/, private.
func TestKeygenMakesTheFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys", "sub")
	h := newHarness(t)
	if code := h.run("keygen", "--out", filepath.Join(dir, "host")); code != 0 {
		t.Fatalf("exit %d: %s", code, h.log.String())
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("%s is mode %04o, want 0700", dir, fi.Mode().Perm())
	}
	for _, f := range []string{"host.key", "host.pub"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if strings.Contains(h.log.String(), "keygen: keygen") {
		t.Errorf("doubled prefix: %s", h.log.String())
	}
}

// fakeMicrovm is a Lookup where the hypervisor's user (microvm, or any
// name asked for) is uid 65534, which owns nothing pack writes: it stands
// in for microvm.nix's microvm user on a machine that has none.
func fakeMicrovm() access.Lookup {
	return access.Lookup{
		User: func(name string) (*user.User, error) {
			return &user.User{Uid: "65534", Gid: "65534", Username: name, Name: name}, nil
		},
		UserID:   func(uid string) (*user.User, error) { return &user.User{Uid: uid, Username: "u" + uid}, nil },
		GroupIDs: func(*user.User) ([]string, error) { return []string{"65534"}, nil },
		GroupID:  func(gid string) (*user.Group, error) { return &user.Group{Gid: gid, Name: "g" + gid}, nil },
	}
}

// TestPackWarnsWhenTheHypervisorCannotRead: the seed's "Permission
// denied": pack writes files its own user owns, mode 0400, which the
// hypervisor's user cannot open. pack says so, once, with the fix.
func TestPackWarnsWhenTheHypervisorCannotRead(t *testing.T) {
	tmp := t.TempDir()
	h := newHarness(t)
	h.deps.lookup = fakeMicrovm()
	if code := h.run("pack", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(tmp, "run"), "--cred", "k=file:"+secretFile(t, tmp, "k", []byte("v"))); code != 0 {
		t.Fatalf("exit %d: %s", code, h.log.String())
	}
	want := "microvm cannot read 2 of 2 payload files"
	if n := strings.Count(h.log.String(), want); n != 1 {
		t.Errorf("log says %q %d times, want once:\n%s", want, n, h.log.String())
	}
	if !strings.Contains(h.log.String(), "--owner microvm") || !strings.Contains(h.log.String(), `"Permission denied"`) {
		t.Errorf("the warning lacks the fix or the symptom:\n%s", h.log.String())
	}
}

// TestPackOwner: --owner gives the payload files and the runtime folder
// pack made to the user, modes unchanged; an unknown user is a usage
// error that leaves nothing behind.
func TestPackOwner(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	owners := []string{me.Username}
	if os.Geteuid() == 0 {
		owners = append(owners, "nobody")
	}
	for _, owner := range owners {
		t.Run(owner, func(t *testing.T) {
			u, err := user.Lookup(owner)
			if err != nil {
				t.Skipf("no user %s here: %v", owner, err)
			}
			tmp := t.TempDir()
			rt := filepath.Join(tmp, "run")
			h := newHarness(t)
			if code := h.run("pack", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", rt, "--owner", owner, "--cred", "k=file:"+secretFile(t, tmp, "k", []byte("v"))); code != 0 {
				t.Fatalf("exit %d: %s", code, h.log.String())
			}
			files := listFiles(t, rt)
			if len(files) == 0 {
				t.Fatal("no payload files")
			}
			for p := range files {
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatal(err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				if fmt.Sprint(st.Uid) != u.Uid || fi.Mode().Perm() != 0o400 {
					t.Errorf("%s: uid %d mode %04o, want uid %s mode 0400", p, st.Uid, fi.Mode().Perm(), u.Uid)
				}
			}
			fi, err := os.Stat(rt)
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); fmt.Sprint(st.Uid) != u.Uid || fi.Mode().Perm() != 0o700 {
				t.Errorf("runtime folder: uid %d mode %04o, want uid %s mode 0700", st.Uid, fi.Mode().Perm(), u.Uid)
			}
		})
	}
	t.Run("unknown user", func(t *testing.T) {
		tmp := t.TempDir()
		rt := filepath.Join(tmp, "run")
		h := newHarness(t)
		if code := h.run("pack", "--vm", "v", "--hypervisor", "qemu", "--runtime-dir", rt, "--owner", "vmcred-no-such-user", "--cred", "k=file:"+secretFile(t, tmp, "k", []byte("v"))); code != 2 {
			t.Errorf("exit %d, want 2: %s", code, h.log.String())
		}
		if _, err := os.Stat(rt); !os.IsNotExist(err) {
			t.Errorf("runtime folder left: %v", err)
		}
	})
}

// TestWaitInterrupted: an interrupt is not a timeout: its own message and
// exit 130, not "context canceled" and 4.
func TestWaitInterrupted(t *testing.T) {
	dir := t.TempDir()
	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // as SIGINT does to main's context
		h := newHarness(t)
		env := &cli.Env{Stdout: &h.stdout, Stderr: &h.stderr, Getenv: h.getenv, Version: "test",
			Log: logging.New(&h.log, logging.Config{Level: zapcore.DebugLevel, Name: "vmcred-host"})}
		code := cli.Main(ctx, "vmcred-host", commands(h.deps), []string{"wait", "--vm", "demo", "--status-dir", dir, "--timeout", "0"}, env)
		if code != 130 || !strings.Contains(h.log.String(), "interrupted") || strings.Contains(h.log.String(), "context canceled") {
			t.Errorf("exit %d, log %s; want 130 and 'interrupted'", code, h.log.String())
		}
	})
}
