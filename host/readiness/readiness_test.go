package readiness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	proto "github.com/vmcred/vmcred/shared/channel"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func TestReadyReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "status")
	st := FromReport("web", proto.Report{Outcome: proto.OutcomeReady, Summary: "2 credentials verified", AgentVersion: "vmcred-guest t", Generation: 3,
		Credentials: []proto.CredentialReport{
			{Name: "big", Size: 4 << 20, SHA256Prefix: "0011223344556677", Delivery: proto.DeliveryChannel, Verification: proto.VerifiedSignature},
			{Name: "small", Size: 3, Delivery: proto.DeliverySMBIOS, Verification: proto.VerifiedSignature},
		}}, t0)
	if err := Write(dir, st); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(Path(dir, "web"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("status file mode %v, err %v", fi.Mode(), err)
	}
	back, err := Read(dir, "web")
	if err != nil || back.State != Ready || back.Generation != 3 || back.Summary != "guest web: 2 credentials verified (generation 3)" {
		t.Fatalf("read back %+v, %v", back, err)
	}
	got, err := Wait(context.Background(), dir, "web", time.Millisecond)
	if err != nil || got.State != Ready {
		t.Errorf("Wait = %v, %v", got.State, err)
	}
}

// TestFailedReport: a failed report names each credential, with control
// characters from the guest removed; a flood of 4096 failures is kept to
// MaxFailures names and a count.
func TestFailedReport(t *testing.T) {
	var creds []proto.CredentialReport
	for i := range proto.MaxReportEntries {
		creds = append(creds, proto.CredentialReport{Name: fmt.Sprintf("c%04d", i), Verification: proto.VerifyMismatch, Error: "digest differs\x1b[2J"})
	}
	st := FromReport("web", proto.Report{Outcome: proto.OutcomeFailed, Summary: "4096 failed\x1b[31m", Credentials: creds}, t0)
	if st.State != Failed || len(st.Failures) != MaxFailures || st.FailuresOmitted != proto.MaxReportEntries-MaxFailures {
		t.Fatalf("state %s, %d failures listed, %d omitted", st.State, len(st.Failures), st.FailuresOmitted)
	}
	if strings.ContainsRune(st.Summary, 0x1b) || strings.ContainsRune(st.Failures[0], 0x1b) {
		t.Errorf("control characters kept: %q %q", st.Summary, st.Failures[0])
	}
	if line := st.StatusLine(); len(line) > 1000 || !strings.Contains(line, "and 4088 more") {
		t.Errorf("status line %q", line)
	}
}

func TestWait(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "status")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Wait(ctx, dir, "web", time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait without a file = %v, want the deadline", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = Write(dir, FromReport("web", proto.Report{Outcome: proto.OutcomeFailed, Summary: "x"}, t0))
	}()
	st, err := Wait(context.Background(), dir, "web", time.Millisecond)
	if err != nil || st.State != Failed {
		t.Fatalf("Wait = %v, %v", st.State, err)
	}
}

// TestFinding5HostStateOwnerAndMode (issue 17, finding 5): a status folder
// or file that other users can write is refused on write and on read, so
// nobody else chooses what wait reports.
func TestFinding5HostStateOwnerAndMode(t *testing.T) {
	ready := FromReport("web", proto.Report{Outcome: proto.OutcomeReady}, t0)

	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := Write(open, ready); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Write into a 0777 folder = %v, want ErrUntrusted", err)
	}
	if _, err := os.Stat(Path(open, "web")); !os.IsNotExist(err) {
		t.Errorf("a status file was written into the 0777 folder")
	}
	// A forged file planted in such a folder is not believed.
	if err := os.WriteFile(Path(open, "web"), []byte(`{"vm":"web","state":"ready","summary":"forged"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(open, "web"); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Read from a 0777 folder = %v, want ErrUntrusted", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := Wait(ctx, open, "web", time.Millisecond); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Wait on a 0777 folder = %v, want ErrUntrusted at once", err)
	}

	// A good folder with a file others can write.
	dir := filepath.Join(t.TempDir(), "status")
	if err := Write(dir, ready); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(Path(dir, "web"), 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(dir, "web"); !errors.Is(err, ErrUntrusted) {
		t.Errorf("Read of a 0666 file = %v, want ErrUntrusted", err)
	}
	// A symlink in place of the file is not followed.
	if err := os.Remove(Path(dir, "web")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", Path(dir, "web")); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(dir, "web"); err == nil {
		t.Errorf("Read followed a symlink")
	}
}

// TestWaitDeadWriter (issue 18, item 5): a "waiting" status whose writer
// has ended fails Wait at once with ErrNoWriter; the real /proc stands for
// itself: a child process is started, recorded, and killed.
func TestWaitDeadWriter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "status")
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep to stand for push: %v", err)
	}
	st := Started("web", "unix:/x", t0, cmd.Process.Pid, "/proc")
	if st.PIDStart == 0 {
		t.Fatalf("no start time read for pid %d", cmd.Process.Pid)
	}
	if err := Write(dir, st); err != nil {
		t.Fatal(err)
	}
	// Alive: Wait keeps waiting (bounded here by a cancelled context).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Wait(ctx, dir, "web", time.Millisecond); !errors.Is(err, context.Canceled) {
		t.Fatalf("writer alive: Wait = %v, want the context's error", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	_, err := Wait(context.Background(), dir, "web", time.Millisecond)
	if !errors.Is(err, ErrNoWriter) || !strings.Contains(err.Error(), fmt.Sprint(cmd.Process.Pid)) {
		t.Fatalf("writer dead: Wait = %v, want ErrNoWriter naming the pid", err)
	}
}

// TestProcAliveReusedPID: a PID now held by another process (another start
// time) is not the writer.
func TestProcAliveReusedPID(t *testing.T) {
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "42"), 0o755)
	// The command field holds a space and a ')', as a hostile name may.
	stat := "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 777 1000 10 0 0 0\n"
	os.WriteFile(filepath.Join(proc, "42", "stat"), []byte(stat), 0o644)
	if got, err := ProcStart(proc, 42); err != nil || got != 777 {
		t.Fatalf("ProcStart = %d, %v; want 777", got, err)
	}
	for _, c := range []struct {
		pid   int
		start uint64
		want  bool
	}{{42, 777, true}, {42, 0, true}, {42, 776, false}, {43, 777, false}} {
		if got := ProcAlive(proc, c.pid, c.start); got != c.want {
			t.Errorf("ProcAlive(%d, %d) = %v, want %v", c.pid, c.start, got, c.want)
		}
	}
	os.WriteFile(filepath.Join(proc, "42", "stat"), []byte("42 (a) S 1\n"), 0o644)
	if _, err := ProcStart(proc, 42); err == nil {
		t.Error("a short stat line was accepted")
	}
}

// TestWaitNoFolder: a status folder that still does not exist after the
// grace fails Wait (a mistyped --status-dir); an existing folder without
// the file is waited for (push may not have started).
func TestWaitNoFolder(t *testing.T) {
	now := t0
	clock := func() time.Time { now = now.Add(time.Second); return now }
	missing := filepath.Join(t.TempDir(), "typo")
	_, err := WaitFor(context.Background(), missing, "web", WaitOptions{Poll: time.Millisecond, FolderGrace: 5 * time.Second, Now: clock})
	if !errors.Is(err, ErrNoFolder) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing folder: %v, want ErrNoFolder naming it", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = WaitFor(ctx, t.TempDir(), "web", WaitOptions{Poll: time.Millisecond, FolderGrace: time.Nanosecond, Now: clock})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("existing folder, no file: %v, want to keep waiting", err)
	}
}

// TestMessageSaidOnce: a failure the summary already states is not
// repeated after it (issue 18, item 3).
func TestMessageSaidOnce(t *testing.T) {
	why := "vmcred.manifest: issued for vm \"db\", this is \"web\""
	st := FromReport("web", proto.Report{Outcome: proto.OutcomeFailed, Summary: "load failed: " + why,
		Credentials: []proto.CredentialReport{{Name: "k", Verification: proto.VerifyMismatch, Error: why}, {Name: "j", Verification: proto.VerifyMismatch, Error: "other"}}}, t0)
	msg := st.Message()
	if strings.Count(msg, why) != 1 || !strings.Contains(msg, "j: mismatch (other)") {
		t.Errorf("message %q: want %q once and j's failure", msg, why)
	}
}
