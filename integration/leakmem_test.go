package integration

// The leak hunt's red-team techniques (issue 17, "Also"): read the memory
// of every long-running vmcred process through /proc/PID/mem once the
// secrets are handed over, and every file another uid could read, for the
// canaries raw, hex, base64 and SHA-256. Kept apart from TestLeakHunt so
// the channel redesign can add its forms here without touching that test.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// standInMarker as argv[1] makes the test binary a stand-in hypervisor:
// see standInHypervisor.
const standInMarker = "vmcred-stand-in-hypervisor"

// standInHypervisor stands for QEMU or cloud-hypervisor in the memory
// hunt: it reads no payload file. With "--api-socket path=X" among its
// arguments it answers cloud-hypervisor's PUT vm.create and vm.boot on X
// (reading and dropping the body). It prints "started" once it is up (for
// the API, after vm.boot), then sleeps until killed.
func standInHypervisor(args []string) int {
	sock := ""
	for i, a := range args {
		if a == "--api-socket" && i+1 < len(args) {
			sock = strings.TrimPrefix(args[i+1], "path=")
		}
	}
	if sock != "" {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 3
		}
		booted := make(chan struct{})
		var once sync.Once
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusNoContent)
			if r.URL.Path == "/api/v1/vm.boot" {
				once.Do(func() { close(booted) })
			}
		}))
		select {
		case <-booted:
		case <-time.After(30 * time.Second):
			return 4
		}
	}
	fmt.Println("started")
	time.Sleep(60 * time.Second)
	return 0
}

// digestNeedles are a value's SHA-256, raw and as hex: a digest of a
// human-chosen secret lets anyone test guesses, so it is as secret as the
// value wherever the value itself may not be.
func digestNeedles(label string, v []byte) []needle {
	sum := sha256.Sum256(v)
	return []needle{
		{label + " as its SHA-256", sum[:]},
		{label + " as its hex SHA-256", []byte(hex.EncodeToString(sum[:]))},
	}
}

// canaryNeedles are every form of v the memory and file scans look for.
func canaryNeedles(name string, v []byte) []needle {
	label := fmt.Sprintf("credential %q", name)
	return append(secretNeedles("credential", name, v), digestNeedles(label, v)...)
}

// procMem reads every readable private or file mapping of pid through
// /proc/PID/mem and returns the labels of the needles found, and how many
// bytes were read. A needle split across two mappings is not found; the
// Go heap is one mapping per arena, so values are not split in practice.
func procMem(pid int, ns []needle) (hits []string, read int64, err error) {
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, 0, err
	}
	defer maps.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, 0, err
	}
	defer mem.Close()
	found := map[string]bool{}
	s := bufio.NewScanner(maps)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		if len(f) >= 6 && (f[5] == "[vvar]" || f[5] == "[vsyscall]" || f[5] == "[vvar_vclock]") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start || end-start > 1<<30 {
			continue
		}
		buf := make([]byte, end-start)
		n, _ := mem.ReadAt(buf, int64(start))
		read += int64(n)
		for _, h := range leakHits(buf[:n], ns) {
			found[h] = true
		}
	}
	for h := range found {
		hits = append(hits, h)
	}
	return hits, read, s.Err()
}

// othersCanRead returns the regular files under roots that a uid other
// than their owner could read: mode bits for group or others, in folders
// that group or others may search all the way down from root.
func othersCanRead(roots ...string) []string {
	var out []string
	for _, root := range roots {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if d.IsDir() {
				if path != root && info.Mode().Perm()&0o011 == 0 {
					return filepath.SkipDir // nobody else gets in
				}
				return nil
			}
			if d.Type().IsRegular() && info.Mode().Perm()&0o044 != 0 {
				out = append(out, path)
			}
			return nil
		})
	}
	return out
}

// scanReadable reports every needle in a file another uid could read.
func scanReadable(t *testing.T, ns []needle, roots ...string) int {
	t.Helper()
	files := othersCanRead(roots...)
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 64<<20))
		f.Close()
		for _, h := range leakHits(b, ns) {
			t.Errorf("LEAK: %s found in %s, which another uid can read", h, path)
		}
	}
	return len(files)
}

// scanOthersReadable searches every file under the hunt's folders that a
// uid other than its owner could read for every canary, raw, encoded or
// as SHA-256 (issue 17, "Also"): no exemption applies there, since every
// file allowed to hold a value is 0400 in a 0700 folder.
func (h *hunt) scanOthersReadable(t *testing.T) {
	t.Helper()
	var ns []needle
	for _, class := range h.needles {
		ns = append(ns, class...)
	}
	for name, v := range h.values {
		ns = append(ns, digestNeedles(fmt.Sprintf("credential %q", name), v)...)
	}
	n := scanReadable(t, ns, h.base, h.shm)
	h.places += n
	t.Logf("%d files another uid could read searched for %d needles", n, len(ns))
}

// TestLeakHuntProcMem runs `vmcred-host run` for each firmware form around
// a stand-in hypervisor that starts and sleeps (it reads nothing: the
// point is what vmcred keeps), waits until the hand-over is done, and then
// reads the whole memory of the running vmcred-host process through
// /proc/PID/mem: no canary may be found, raw, hex, base64 or SHA-256 (the
// manifest's digests go to the hypervisor, not into vmcred's heap for the
// life of the VM). It also checks that the process is not dumpable (a
// non-root reader of the same uid is refused) and has no core limit, and
// scans the argv and environment of every child and every file another
// uid can read.
func TestLeakHuntProcMem(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipOrFail(t, "reading another process's memory after PR_SET_DUMPABLE 0 needs CAP_SYS_PTRACE: run as root")
	}
	sh := testenv.NeedTool(t, "sh", "a POSIX shell plays the hypervisor")
	base, err := os.MkdirTemp("", "vc-mem-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	// vmcred-host runs as an unprivileged user (nobody), as a VM's
	// launcher would, so that its dumpable flag shows; the test reads its
	// memory as root.
	const uid = 65534
	if err := os.Chmod(base, 0o755); err != nil { // so the readable-file scan sees in
		t.Fatal(err)
	}
	secrets := filepath.Join(base, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(secrets, uid, uid); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(base, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, uid); err != nil {
		t.Fatal(err)
	}
	values := map[string][]byte{"api-key": randomText(), "db-password": randomBytes(48), "tls-key": randomBytes(20 << 10)}
	var ns []needle
	var credArgs []string
	for name, v := range values {
		p := filepath.Join(secrets, name)
		if err := os.WriteFile(p, v, 0o400); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, canaryNeedles(name, v)...)
		credArgs = append(credArgs, "--cred", name+"=file:"+p)
	}
	// A copy of the binary nobody can run (the built one is in a 0700
	// folder).
	hostBin := filepath.Join(base, "vmcred-host")
	bin, err := os.ReadFile(built.host)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hostBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// The stand-in hypervisors: a shell that says it started and sleeps
	// (run's added arguments land in $0 and after, unused), and this test
	// binary playing cloud-hypervisor's API. Both must be runnable by
	// nobody: copies in base.
	standIn := []string{sh, "-c", "echo started; exec sleep 60", "hypervisor"}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	selfCopy := filepath.Join(base, "stand-in")
	if b, err := os.ReadFile(self); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(selfCopy, b, 0o755); err != nil {
		t.Fatal(err)
	}
	apiSock := filepath.Join(home, "ch-api.sock")
	forms := []struct {
		name    string
		args    []string
		standIn []string
	}{
		{"qemu", []string{"--hypervisor", "qemu"}, standIn},
		{"qemu-microvm", []string{"--hypervisor", "qemu-microvm"}, standIn},
		{"cloud-hypervisor --ch-api", []string{"--hypervisor", "cloud-hypervisor", "--ch-api", apiSock},
			[]string{selfCopy, standInMarker, "--api-socket", "path=" + apiSock}},
	}
	for _, form := range forms {
		t.Run(form.name, func(t *testing.T) {
			short := strings.Fields(form.name)[0]
			rt := filepath.Join(home, "run-"+short)
			args := append([]string{"run", "--vm", "mem-" + short, "--runtime-dir", rt}, form.args...)
			args = append(append(args, credArgs...), "--")
			args = append(args, form.standIn...)
			env := []string{"PATH=/usr/bin:/bin", "HOME=" + home, "TMPDIR=" + home}
			p := startProc(t, "vmcred-host run ("+form.name+")", env, &syscall.Credential{Uid: uid, Gid: uid}, hostBin, args...)
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(string(p.stdout.Bytes()), "started") {
				if p.exited() || time.Now().After(deadline) {
					t.Fatalf("the stand-in hypervisor did not start (exited %v): %s", p.exited(), redact(string(p.stderr.Bytes()), ns))
				}
				time.Sleep(10 * time.Millisecond)
			}
			pid := p.cmd.Process.Pid
			checkHardened(t, pid, uid)
			hits, n, err := procMem(pid, ns)
			if err != nil {
				t.Fatalf("read the memory of pid %d: %v", pid, err)
			}
			if n < 1<<20 {
				t.Fatalf("read only %d bytes of pid %d's memory", n, pid)
			}
			for _, h := range hits {
				t.Errorf("LEAK: %s found in the memory of %s (pid %d), after the hand-over", h, p.label, pid)
			}
			t.Logf("%s: %d bytes of memory scanned, %d files others can read scanned", form.name, n, scanReadable(t, ns, base))
			syscall.Kill(pid, syscall.SIGTERM)
			p.wait(t, 20*time.Second)
			snaps, _ := p.watch.finish()
			for place, contents := range snaps {
				for _, c := range contents {
					for _, h := range leakHits(c, ns) {
						t.Errorf("LEAK: %s found in %s", h, place)
					}
				}
			}
			if out := string(p.stdout.Bytes()) + string(p.stderr.Bytes()); len(leakHits([]byte(out), ns)) > 0 {
				t.Errorf("LEAK: output of %s: %v", p.label, leakHits([]byte(out), ns))
			}
		})
	}
}

// checkHardened checks that pid (a vmcred process running as another uid
// than root) is not dumpable and has a core limit of 0: the kernel makes
// the /proc/PID files of a non-dumpable process root's, whatever its uid
// (task_dump_owner), and /proc/PID/limits shows the core limit.
func checkHardened(t *testing.T, pid, uid int) {
	t.Helper()
	fi, err := os.Stat(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	if owner := fi.Sys().(*syscall.Stat_t).Uid; int(owner) == uid {
		t.Errorf("pid %d (uid %d) is dumpable: its /proc/PID/mem belongs to it, so any process of uid %d can read its memory", pid, uid, uid)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max core file size") {
			if f := strings.Fields(line); len(f) < 6 || f[4] != "0" || f[5] != "0" {
				t.Errorf("pid %d: %q, want a core limit of 0", pid, line)
			}
			return
		}
	}
	t.Errorf("pid %d: no core limit in /proc/PID/limits", pid)
}
