package readiness

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	hostchannel "github.com/vmcred/vmcred/host/channel"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/notify"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

type sent struct {
	mu   sync.Mutex
	msgs []string
}

func (s *sent) notify(m string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	return nil
}

func newRecorder(t *testing.T) (*Recorder, *sent, string) {
	t.Helper()
	dir := t.TempDir() + "/status"
	s := &sent{}
	r, err := NewRecorder(dir, Status{VM: "web", Listen: "unix:/x", Channel: "vsock-stream:2:5000"}, s.notify, func() time.Time { return t0 })
	if err != nil {
		t.Fatal(err)
	}
	return r, s, dir
}

func TestReadyReport(t *testing.T) {
	r, s, dir := newRecorder(t)
	st, err := Read(dir, "web")
	if err != nil || st.State != Waiting {
		t.Fatalf("initial state %q, err %v", st.State, err)
	}
	fi, err := os.Stat(Path(dir, "web"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("status file mode %v, err %v", fi.Mode(), err)
	}
	p := hostchannel.Peer{Listener: "unix:/x", Seq: 1}
	r.Notify(p, notify.Message{Fields: []notify.Field{{Key: "READY", Value: "1"}, {Key: "STATUS", Value: "Ready.\x1b[31m"}}}, "eof")
	r.Fetched(p, hostchannel.Hello{BootID: "b1"}, []string{"big"}, 4<<20)
	ack := r.Report(p, hostchannel.Hello{BootID: "b1"}, proto.Report{Outcome: proto.OutcomeReady, Summary: "2 credentials verified", AgentVersion: "vmcred-guest t",
		Credentials: []proto.CredentialReport{
			{Name: "big", Size: 4 << 20, SHA256Prefix: "0011223344556677", Delivery: proto.DeliveryChannel, Verification: proto.VerifiedSignature},
			{Name: "small", Size: 3, Delivery: proto.DeliverySMBIOS, Verification: proto.VerifiedSignature},
		}})
	if ack != "host recorded: ready" {
		t.Errorf("ack %q", ack)
	}
	st, err = Read(dir, "web")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != Ready || st.Summary != "guest web: 2 credentials verified" || st.Boot == nil || !st.Boot.Ready || st.Fetch == nil || st.Report == nil {
		t.Errorf("status %+v", st)
	}
	if st.Boot.Status != "Ready. [31m" {
		t.Errorf("boot status %q: control characters must be replaced", st.Boot.Status)
	}
	want := []string{"STATUS=guest web: waiting for its report", "READY=1\nSTATUS=guest web: 2 credentials verified"}
	if diff := cmp.Diff(want, s.msgs); diff != "" {
		t.Errorf("sd_notify messages (-want +got):\n%s", diff)
	}
	done, ready := r.Outcome()
	select {
	case <-done:
	default:
		t.Fatal("outcome not signalled")
	}
	if !ready() {
		t.Error("outcome says not ready")
	}
}

func TestFailedReport(t *testing.T) {
	r, s, dir := newRecorder(t)
	r.Report(hostchannel.Peer{}, hostchannel.Hello{}, proto.Report{Outcome: proto.OutcomeFailed, Summary: "load failed: 1 problem", AgentVersion: "x",
		Credentials: []proto.CredentialReport{
			{Name: "big", Size: 4 << 20, Delivery: proto.DeliveryChannel, Verification: proto.VerifyMismatch, Error: "sha256 differs"},
			{Name: "ok", Size: 1, Delivery: proto.DeliverySMBIOS, Verification: proto.VerifiedDigest},
		}})
	st, err := Read(dir, "web")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != Failed || len(st.Failures) != 1 || !strings.Contains(st.Failures[0], "big: mismatch") {
		t.Errorf("status %+v", st)
	}
	last := s.msgs[len(s.msgs)-1]
	if strings.Contains(last, "READY=1") || !strings.Contains(last, "STATUS=guest web: load failed: big") {
		t.Errorf("sd_notify %q: want a STATUS naming the failure and no READY", last)
	}
	_, ready := r.Outcome()
	if ready() {
		t.Error("outcome says ready")
	}
}

func TestWait(t *testing.T) {
	dir := t.TempDir()
	// No file yet: wait keeps polling until the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	if _, err := Wait(ctx, dir, "web", 20*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline", err)
	}
	r, err := NewRecorder(dir, Status{VM: "web"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		r.Report(hostchannel.Peer{}, hostchannel.Hello{}, proto.Report{Outcome: proto.OutcomeReady, AgentVersion: "x"})
	}()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := Wait(ctx, dir, "web", 20*time.Millisecond)
	if err != nil || st.State != Ready {
		t.Fatalf("Wait: %v, state %q", err, st.State)
	}
}
