package integration

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vmcred/vmcred/integration/testenv"
)

// faultEnv is the environment of the commands the fault tests start.
func faultEnv(dir string) []string {
	return []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir}
}

// faultDirs makes a short work folder (Unix socket paths) and a folder on
// /dev/shm (the agent's credstore must be on tmpfs).
func faultDirs(t *testing.T) (work, shm string) {
	t.Helper()
	work, err := os.MkdirTemp("", "vc-f-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	shm, err = os.MkdirTemp("/dev/shm", "vc-f-")
	if err != nil {
		testenv.SkipOrFail(t, "no writable /dev/shm tmpfs for the credstore (the agent needs tmpfs): %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	return work, shm
}

// writeSecretFiles writes one 0400 file per credential in dir and returns the
// --cred flags for them.
func writeSecretFiles(t *testing.T, dir string, vals map[string][]byte) []string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var flags []string
	for _, name := range slices.Sorted(maps.Keys(vals)) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, vals[name], 0o400); err != nil {
			t.Fatal(err)
		}
		flags = append(flags, "--cred", name+"=file:"+p)
	}
	return flags
}

// valueDigests maps each credential to the SHA-256 of its value.
func valueDigests(vals map[string][]byte) map[string]string {
	out := map[string]string{}
	for k, v := range vals {
		out[k] = fmt.Sprintf("%x", sha256.Sum256(v))
	}
	return out
}

// credstoreState reads a credstore: the digest of every credential file, and
// the names of the other entries (temporary files), with a problem for
// any entry that is not a 0400 regular file.
func credstoreState(t *testing.T, dir string) (files map[string]string, temps []string) {
	t.Helper()
	files = map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if !info.Mode().IsRegular() || info.Mode().Perm() != 0o400 {
			t.Errorf("credstore entry %s: mode %v, want a 0400 regular file", e.Name(), info.Mode())
		}
		if strings.HasPrefix(e.Name(), ".") {
			temps = append(temps, e.Name())
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return files, temps
}

func mustRunOK(t *testing.T, what string, bin string, env []string, args ...string) result {
	t.Helper()
	r := run(t, bin, env, args...)
	if r.code != 0 {
		t.Fatalf("%s: exit %d: %s", what, r.code, r.stderr)
	}
	return r
}

// TestFaultPushKilledMidTransfer: vmcred-host push is SIGKILLed while a
// 16 MiB credential is on its way to the agent. A relay between them (as
// a hybrid-vsock VMM is) holds the transfer after 1 MiB, so push is
// certainly blocked mid-write when the kill lands. The agent writes
// nothing: the credstore keeps exactly its previous content, with no
// partial or temporary file, and the host's status still says what the
// last whole session said. A new push then goes through: no host process
// keeps state that a restart could lose.
func TestFaultPushKilledMidTransfer(t *testing.T) {
	work, shm := faultDirs(t)
	env := faultEnv(work)
	host, guest := built.host, built.guest
	mustRunOK(t, "keygen", host, env, "keygen", "--out", filepath.Join(work, "k"))
	pub, key := filepath.Join(work, "k.pub"), filepath.Join(work, "k.key")
	agentDir := filepath.Join(work, "agent")
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	agentSock, relaySock := filepath.Join(agentDir, "a.sock"), filepath.Join(agentDir, "relay.sock")
	store, status, hostStatus := filepath.Join(shm, "credstore"), filepath.Join(work, "gst"), filepath.Join(work, "host-status")
	agent := startProc(t, "agent", env, nil, guest, "agent", "--listen", "unix:"+agentSock, "--dmi-table", filepath.Join(work, "none.dmi"),
		"--trust-key", pub, "--vm", "vm1", "--credstore", store, "--status-dir", status, "--system-credentials", "")
	waitForSocket(t, agentSock)
	push := func(label, via string, vals map[string][]byte) *watchedProc {
		return startProc(t, label, env, nil, host, slices.Concat([]string{"push", "--vm", "vm1", "--connect", "unix:" + via, "--sign-key", key,
			"--status-dir", hostStatus, "--timeout", "20s"}, writeSecretFiles(t, filepath.Join(work, label), vals))...)
	}

	// Before: the store holds an earlier version of both credentials.
	old := map[string][]byte{"disk-key": randomBytes(200), "api-key": randomText()}
	if code := push("old", agentSock, old).wait(t, 20*time.Second); code != 0 {
		t.Fatalf("push (old): exit %d", code)
	}
	if files, _ := credstoreState(t, store); !equalMaps(files, valueDigests(old)) {
		t.Fatalf("the first push did not write the old version")
	}

	// Now: 16 MiB, through the relay, which holds after 1 MiB.
	const size = 16 << 20
	cur := map[string][]byte{"disk-key": randomBytes(size), "api-key": randomText()}
	ns := append(secretNeedles("credential", "disk-key", cur["disk-key"]), secretNeedles("credential", "api-key", cur["api-key"])...)
	const hold = 1 << 20
	rl := newHoldRelay(t, relaySock, agentSock, hold)
	rl.upward = true
	killed := push("new", relaySock, cur)
	select {
	case <-rl.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the transfer never started")
	}
	if got := rl.first.Load(); got != hold {
		t.Fatalf("the relay held after %d bytes, want %d: push did not send", got, hold)
	}
	if err := killed.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if code := killed.wait(t, 5*time.Second); code != -1 {
		t.Fatalf("push: exit %d, want killed", code)
	}
	rl.unhold()
	// The agent sees the stream end mid-frame and drops the session.
	time.Sleep(200 * time.Millisecond)
	files, temps := credstoreState(t, store)
	if !equalMaps(files, valueDigests(old)) {
		t.Errorf("the killed push changed the credstore: want exactly the old content")
	}
	if len(temps) > 0 {
		t.Errorf("the killed push left %d temporary file(s) in the credstore", len(temps))
	}
	// The killed push had recorded "waiting" (its PID, the generation the
	// guest holds): wait says at once that it ended without a report
	// (issue 18, item 5), rather than the last session's "ready".
	if b, err := os.ReadFile(filepath.Join(hostStatus, "vm1.json")); err != nil || !bytes.Contains(b, []byte(`"state": "waiting"`)) || !bytes.Contains(b, []byte(`"generation": 1`)) {
		t.Errorf("the host status is not the killed push's waiting record with generation 1 (%v)", err)
	}
	if r := run(t, host, env, "wait", "--vm", "vm1", "--status-dir", hostStatus, "--timeout", "20s"); r.code != 1 || !strings.Contains(r.stderr, "ended without a report") {
		t.Errorf("wait after the killed push: exit %d, %q; want 1 at once", r.code, r.stderr)
	}

	// A new push (the host restarted) goes through.
	again := push("new-again", agentSock, cur)
	if code := again.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("push after the kill: exit %d: %s", code, again.stderr.Bytes())
	}
	files, temps = credstoreState(t, store)
	if !equalMaps(files, valueDigests(cur)) || len(temps) > 0 {
		t.Errorf("after the new push the credstore does not hold the new version (%d temporary files)", len(temps))
	}
	agent.cmd.Process.Signal(syscall.SIGTERM)
	if code := agent.wait(t, 10*time.Second); code != 0 {
		t.Errorf("agent: exit %d after SIGTERM", code)
	}
	if hits := leakHits(agent.stderr.Bytes(), ns); len(hits) > 0 {
		t.Errorf("LEAK: %s in the agent's output", hits[0])
	}
}

// fwCfgDir lays out pack --hypervisor qemu-microvm's fw_cfg files as the
// guest's sysfs shows them: DIR/NAME/raw.
func fwCfgDir(t *testing.T, args, dir string) {
	t.Helper()
	n := 0
	for line := range strings.SplitSeq(args, "\n") {
		rest, ok := strings.CutPrefix(line, "name=opt/io.systemd.credentials/")
		if !ok {
			continue
		}
		name, file, ok := strings.Cut(rest, ",file=")
		if !ok {
			t.Fatalf("fw_cfg argument without file=")
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "raw"), b, 0o400); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 {
		t.Fatal("pack printed no fw_cfg arguments")
	}
}

// TestFaultCredstoreFull: the credstore is a 64 KiB tmpfs and the new
// credentials need more. The load fails cleanly (exit 3, naming the
// folder and a credential), the old content stays whole, no temporary
// file is left, and the store still takes a load that fits.
func TestFaultCredstoreFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (run the tests as root)")
	}
	work, err := os.MkdirTemp("", "vc-full-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	mnt := filepath.Join(work, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		testenv.SkipOrFail(t, "cannot mount a 64 KiB tmpfs here (%v: %s); needs CAP_SYS_ADMIN", err, bytes.TrimSpace(b))
	}
	t.Cleanup(func() {
		if b, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, b)
		}
	})
	env := faultEnv(work)
	host, guest := built.host, built.guest
	store := filepath.Join(mnt, "credstore")
	pack := func(label string, vals map[string][]byte) string {
		dir := filepath.Join(work, label)
		r := mustRunOK(t, "pack "+label, host, env, slices.Concat([]string{"pack", "--vm", "vm1", "--hypervisor", "qemu-microvm", "--runtime-dir", filepath.Join(work, "rt-"+label)},
			writeSecretFiles(t, filepath.Join(work, "src-"+label), vals))...)
		fwCfgDir(t, r.stdout, dir)
		return dir
	}
	// One status folder, as on a real guest: it holds the record of what
	// the agent wrote, which decides what a later load may remove.
	load := func(fw string) result {
		return run(t, guest, env, "load", "--fw-cfg", fw, "--vm", "vm1", "--credstore", store, "--status-dir", filepath.Join(work, "status"), "--system-credentials", "")
	}

	old := map[string][]byte{}
	cur := map[string][]byte{}
	for i := range 10 {
		name := fmt.Sprintf("cred-%02d", i)
		if i < 3 {
			old[name] = randomBytes(100)
		}
		cur[name] = randomBytes(12 << 10) // 120 KiB in all
	}
	if r := load(pack("old", old)); r.code != 0 {
		t.Fatalf("load (old): exit %d: %s", r.code, r.stderr)
	}
	r := load(pack("new", cur))
	if r.code != 3 {
		t.Errorf("load into a full credstore: exit %d, want 3: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, store) || !strings.Contains(r.stderr, `credential "cred-`) || !strings.Contains(r.stderr, "no space left") {
		t.Errorf("the error does not name the credstore, the credential and the cause: %s", r.stderr)
	}
	ns := []needle{}
	for name, v := range cur {
		ns = append(ns, secretNeedles("credential", name, v)...)
	}
	if hits := leakHits([]byte(r.stdout+r.stderr), ns); len(hits) > 0 {
		t.Errorf("LEAK: %s in the output of the failed load", hits[0])
	}
	files, temps := credstoreState(t, store)
	if !equalMaps(files, valueDigests(old)) {
		t.Errorf("the failed load changed the credstore: want exactly the old content")
	}
	if len(temps) > 0 {
		t.Errorf("the failed load left %d temporary file(s)", len(temps))
	}
	// Still usable: a version that fits goes in.
	fits := map[string][]byte{"cred-00": randomBytes(100), "cred-01": randomBytes(100)}
	if r := load(pack("fits", fits)); r.code != 0 {
		t.Fatalf("load that fits, after the failure: exit %d: %s", r.code, r.stderr)
	}
	if files, _ := credstoreState(t, store); !equalMaps(files, valueDigests(fits)) {
		t.Errorf("after a load that fits the credstore does not hold exactly it: %v", slices.Sorted(maps.Keys(files)))
	}
}

// TestFaultAgentKilledMidWrite: vmcred-guest load of 100 credentials is
// SIGKILLed at random points, alternating between two versions. After
// every kill each credential file is whole, one version or the other; no
// credential is missing or partial. A clean load then succeeds and leaves
// no temporary file behind.
func TestFaultAgentKilledMidWrite(t *testing.T) {
	work, shm := faultDirs(t)
	env := faultEnv(work)
	host, guest := built.host, built.guest
	versions := [2]map[string][]byte{{}, {}}
	for i := range 100 {
		name := fmt.Sprintf("svc-%03d", i)
		versions[0][name] = randomBytes(100 + i)
		versions[1][name] = randomBytes(100 + i)
	}
	var tables [2]string
	for v := range 2 {
		tables[v] = filepath.Join(work, fmt.Sprintf("v%d.dmi", v))
		mustRunOK(t, "pack", host, env, slices.Concat([]string{"pack", "--vm", "vm1", "--hypervisor", "dmi", "--out", tables[v]},
			writeSecretFiles(t, filepath.Join(work, fmt.Sprintf("src%d", v)), versions[v]))...)
	}
	sums := [2]map[string]string{valueDigests(versions[0]), valueDigests(versions[1])}
	store, status := filepath.Join(shm, "credstore"), filepath.Join(work, "status")
	args := func(v int) []string {
		return []string{"load", "--dmi-table", tables[v], "--vm", "vm1", "--credstore", store, "--status-dir", status, "--system-credentials", ""}
	}
	start := time.Now()
	mustRunOK(t, "load (version 0)", guest, env, args(0)...)
	full := time.Since(start)

	// Every other kill lands right after the k-th rename into the store
	// (k random), seen through inotify: certainly inside the commit.
	ifd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := syscall.InotifyAddWatch(ifd, store, syscall.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	// Non-blocking, so the runtime's poller waits on it: read deadlines
	// work, and no goroutine spins.
	ino := os.NewFile(uintptr(ifd), "inotify")
	defer ino.Close()
	killed, finished, mixed, leftovers, atRename, mixedAtRename := 0, 0, 0, 0, 0, 0
	const kills = 60
	for i := range kills {
		v := (i + 1) % 2
		drainInotify(ino)
		cmd := exec.Command(guest, args(v)...)
		cmd.Env = env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Lowest priority: on a busy machine the kill below still comes
		// before the agent has run much further.
		syscall.Setpriority(syscall.PRIO_PROCESS, cmd.Process.Pid, 19)
		if i%2 == 0 {
			time.Sleep(time.Duration(rand.Int64N(int64(full + full/4)))) // anywhere
		} else {
			waitRenames(ino, 1+rand.IntN(20), time.Now().Add(5*time.Second)) // after rename k
		}
		cmd.Process.Kill()
		err := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			killed++
		} else if err == nil {
			finished++
		} else {
			t.Fatalf("kill %d: the load failed by itself: %v", i, err)
		}
		files, temps := credstoreState(t, store)
		leftovers += len(temps)
		n := [2]int{}
		for name, sum := range files {
			switch sum {
			case sums[0][name]:
				n[0]++
			case sums[1][name]:
				n[1]++
			default:
				t.Errorf("kill %d: %s is neither version: partial or foreign", i, name)
			}
		}
		if len(files) != 100 {
			t.Errorf("kill %d: %d credential files, want 100", i, len(files))
		}
		if n[0] > 0 && n[1] > 0 {
			mixed++
			if i%2 == 1 {
				mixedAtRename++
			}
		}
		if i%2 == 1 {
			atRename++
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d kills (load takes ~%v): %d mid-run, %d after the end; %d left versions mixed (%d of the %d kills at a rename); %d temporary files seen",
		kills, full.Round(time.Millisecond), killed, finished, mixed, mixedAtRename, atRename, leftovers)
	if mixed < 2 {
		t.Errorf("only %d of %d kills left the store between versions: the commit was not exercised", mixed, kills)
	}
	if killed < kills/3 {
		t.Errorf("only %d of %d kills landed while the load ran: the test did not exercise it", killed, kills)
	}

	mustRunOK(t, "load (clean)", guest, env, args(1)...)
	files, temps := credstoreState(t, store)
	if !equalMaps(files, sums[1]) {
		t.Errorf("after a clean load the credstore does not hold exactly version 1")
	}
	if len(temps) > 0 {
		t.Errorf("the clean load left %d temporary file(s) in the credstore", len(temps))
	}
	// The credstore's own record: its temporary files are cleaned up.
	// So is the status report's: agent.WriteStatus uses one fixed
	// temporary name, so a kill during that write leaves at most one file,
	// which the clean load above overwrote and renamed.
	ents, _ := os.ReadDir(status)
	var ns []needle
	for v := range 2 {
		for name, val := range versions[v] {
			if name < "svc-010" {
				ns = append(ns, secretNeedles("credential", name, val)...)
			}
		}
	}
	stale := 0
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if strings.HasPrefix(e.Name(), ".credstore.state") {
			t.Errorf("the clean load left the credstore's temporary file %s", e.Name())
			continue
		}
		stale++
		if info.Mode().Perm() != 0o600 {
			t.Errorf("leftover %s has mode %04o, want 0600", e.Name(), info.Mode().Perm())
		}
		if b, _ := os.ReadFile(filepath.Join(status, e.Name())); len(leakHits(b, ns)) > 0 {
			t.Errorf("LEAK: leftover %s holds a value", e.Name())
		}
	}
	if stale > 0 {
		t.Errorf("%d temporary status file(s) left in the status folder after a clean load", stale)
	}
}

// drainInotify discards pending inotify events.
func drainInotify(f *os.File) {
	buf := make([]byte, 64<<10)
	for {
		f.SetReadDeadline(time.Now())
		if n, _ := f.Read(buf); n <= 0 {
			return
		}
	}
}

// waitRenames returns once k files with credential names (not starting
// with '.') were renamed into the watched folder, or at the deadline.
func waitRenames(f *os.File, k int, deadline time.Time) {
	buf := make([]byte, 64<<10)
	f.SetReadDeadline(deadline)
	for seen := 0; seen < k; {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			if len(name) > 0 && name[0] != '.' {
				seen++
			}
		}
	}
}
