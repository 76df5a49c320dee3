package vsocknotify

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmcred/vmcred/shared/address"
)

func socketPath(t *testing.T) string { return filepath.Join(t.TempDir(), "host.sock") }

func listen(t *testing.T, path string) net.Listener {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestNotify sends as systemd ≥ 256 does: write, half-close, wait for EOF.
func TestNotify(t *testing.T) {
	tests := []struct {
		name     string
		receiver func(c net.Conn) // after reading the message
		want     error
		timeout  bool
	}{
		{name: "receiver closes", receiver: func(c net.Conn) {}},
		{name: "receiver answers", receiver: func(c net.Conn) { c.Write([]byte("?")) }, want: ErrNotifyReply},
		{name: "receiver never closes", receiver: func(c net.Conn) { time.Sleep(time.Second) }, timeout: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := socketPath(t)
			l := listen(t, path)
			defer l.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(io.LimitReader(c, 4097))
				got <- b
				tt.receiver(c)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := Notify(ctx, "unix:"+path, []byte("READY=1\nSTATUS=vmcred: 2 credentials"), nil)
			switch {
			case tt.timeout && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, net.ErrClosed):
				t.Errorf("got %v, want the deadline", err)
			case !tt.timeout && !errors.Is(err, tt.want) && !(tt.want == nil && err == nil):
				t.Errorf("got %v, want %v", err, tt.want)
			}
			if b := <-got; string(b) != "READY=1\nSTATUS=vmcred: 2 credentials" {
				t.Errorf("receiver got %q", b)
			}
		})
	}
}

func TestNotifyRefusesDatagramAddresses(t *testing.T) {
	dialed := false
	dial := func(context.Context, address.Address) (net.Conn, error) { dialed = true; return nil, errors.New("no") }
	for _, s := range []string{"vsock-dgram:2:1", "vsock-seqpacket:2:1", "/run/systemd/notify"} {
		if err := Notify(context.Background(), s, []byte("READY=1"), dial); err == nil {
			t.Errorf("%s: accepted", s)
		}
	}
	if dialed {
		t.Error("dialed an address it should refuse")
	}
	if !IsVsockNotifySocket("vsock-stream:2:9") || IsVsockNotifySocket("/run/systemd/notify") {
		t.Error("IsVsockNotifySocket")
	}
}
