package readiness

import (
	"context"
	"errors"
	"fmt"
	"os"
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
