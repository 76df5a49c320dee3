package address

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	long := strings.Repeat("p", MaxUnixPathLen)
	tests := []struct {
		in   string
		want Address
		str  string // canonical form; "" means the input itself
	}{
		{in: "vsock:2:1234", want: Address{Kind: Vsock, CID: 2, Port: 1234}},
		{in: "vsock-stream:2:1234", want: Address{Kind: VsockStream, CID: 2, Port: 1234}},
		{in: "vsock-seqpacket:3:1", want: Address{Kind: VsockSeqpacket, CID: 3, Port: 1}},
		{in: "vsock-dgram:4294967294:4294967294", want: Address{Kind: VsockDgram, CID: 4294967294, Port: 4294967294}},
		{in: "vsock:hypervisor:5", want: Address{Kind: Vsock, CID: CIDHypervisor, Port: 5}, str: "vsock:0:5"},
		{in: "vsock:local:5", want: Address{Kind: Vsock, CID: CIDLocal, Port: 5}, str: "vsock:1:5"},
		{in: "vsock-stream:host:5", want: Address{Kind: VsockStream, CID: CIDHost, Port: 5}, str: "vsock-stream:2:5"},
		{in: "vsock::5", want: Address{Kind: Vsock, CID: CIDAny, Port: 5}},
		{in: "vsock:any:5", want: Address{Kind: Vsock, CID: CIDAny, Port: 5}, str: "vsock::5"},
		{in: "vsock:-1:5", want: Address{Kind: Vsock, CID: CIDAny, Port: 5}, str: "vsock::5"},
		{in: "vsock:4294967295:5", want: Address{Kind: Vsock, CID: CIDAny, Port: 5}, str: "vsock::5"},
		{in: "vsock:0:0", want: Address{Kind: Vsock, CID: 0, Port: 0}},
		{in: "unix:/run/vmcred/vm1.vsock_1234", want: Address{Kind: Unix, Path: "/run/vmcred/vm1.vsock_1234"}},
		{in: "unix:relative/sock", want: Address{Kind: Unix, Path: "relative/sock"}},
		{in: "unix:@abstract", want: Address{Kind: Unix, Path: "@abstract"}},
		{in: "unix:/a:b", want: Address{Kind: Unix, Path: "/a:b"}},
		{in: "unix:/a b", want: Address{Kind: Unix, Path: "/a b"}},
		{in: "unix:" + long, want: Address{Kind: Unix, Path: long}},
		{in: "unix:@" + long, want: Address{Kind: Unix, Path: "@" + long}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
			str := tt.str
			if str == "" {
				str = tt.in
			}
			if got.String() != str {
				t.Errorf("String() = %q, want %q", got.String(), str)
			}
			again, err := Parse(got.String())
			if err != nil {
				t.Fatalf("Parse(String()): %v", err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in, reason string // reason: a substring the error must contain
	}{
		{"", "no scheme"},
		{"/run/x.sock", `write "unix:/run/x.sock"`},
		{"@abstract", `write "unix:@abstract"`},
		{"tcp:1.2.3.4:5", `unknown scheme "tcp"`},
		{"VSOCK:2:5", `unknown scheme "VSOCK"`},
		{"vsock", "no scheme"},
		{"vsock:", "no ':' before the port"},
		{"vsock:2", "no ':' before the port"},
		{"vsock:2:", "port is empty"},
		{"vsock:2:1234\n", "ends in a newline"},
		{"vsock:2:1234 ", "not a decimal"},
		{"vsock:2: 1234", "not a decimal"},
		{"vsock:2:+5", "not a decimal"},
		{"vsock:2:-5", "not a decimal"},
		{"vsock:2:0x10", "leading zero"},
		{"vsock:2:010", "leading zero"},
		{"vsock:2:4294967295", "VMADDR_PORT_ANY"},
		{"vsock:2:4294967296", "over 4294967295"},
		{"vsock:2:99999999999999999999", "over 4294967295"},
		{"vsock:2:1:2", "not a decimal"},
		{"vsock:Host:1", "CID"},
		{"vsock:02:1", "leading zero"},
		{"vsock:4294967296:1", "CID"},
		{"vsock:-2:1", "CID"},
		{"unix:", "empty Unix socket path"},
		{"unix:@", "empty abstract"},
		{"unix:/a\x00b", "NUL byte"},
		{"unix:/a\n", "control byte 0x0a"},
		{"unix:/" + strings.Repeat("p", MaxUnixPathLen), "sun_path limit"},
		{"unix:@" + strings.Repeat("p", MaxUnixPathLen+1), "sun_path limit"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not say %q", err, tt.reason)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes; long inputs must be cut", len(err.Error()))
			}
		})
	}
}

func TestCheckDialListen(t *testing.T) {
	tests := []struct {
		in             string
		dial, listen   bool
		isVsock, isStr bool
		network        string
	}{
		{in: "vsock:2:1234", dial: true, listen: true, isVsock: true, isStr: true, network: "vsock"},
		{in: "vsock-stream:2:1234", dial: true, listen: true, isVsock: true, isStr: true, network: "vsock"},
		{in: "vsock-stream:3:0", dial: false, listen: true, isVsock: true, isStr: true, network: "vsock"},
		{in: "vsock-stream::1234", dial: false, listen: true, isVsock: true, isStr: true, network: "vsock"},
		{in: "vsock-seqpacket:2:1234", isVsock: true, network: "vsock"},
		{in: "vsock-dgram:2:1234", isVsock: true, network: "vsock"},
		{in: "unix:/run/x_1234", dial: true, listen: true, isStr: true, network: "unix"},
		{in: "unix:@x", dial: true, listen: true, isStr: true, network: "unix"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if err := a.CheckDial(); (err == nil) != tt.dial {
				t.Errorf("CheckDial() = %v, want ok=%v", err, tt.dial)
			} else if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("CheckDial error %v does not wrap ErrInvalid", err)
			}
			if err := a.CheckListen(); (err == nil) != tt.listen {
				t.Errorf("CheckListen() = %v, want ok=%v", err, tt.listen)
			}
			if a.IsVsock() != tt.isVsock || a.IsStream() != tt.isStr || a.Network() != tt.network {
				t.Errorf("IsVsock, IsStream, Network = %v, %v, %q; want %v, %v, %q",
					a.IsVsock(), a.IsStream(), a.Network(), tt.isVsock, tt.isStr, tt.network)
			}
		})
	}
}

func TestCheckHandBuilt(t *testing.T) {
	bad := []Address{
		{},
		{Kind: Kind(99), Port: 1},
		{Kind: Unix},
		{Kind: Unix, Path: "/x", Port: 3},
		{Kind: VsockStream, CID: 2, Port: 1, Path: "/x"},
		{Kind: VsockStream, CID: 2, Port: PortAny},
	}
	for _, a := range bad {
		if err := a.CheckListen(); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("%#v.CheckListen() = %v, want ErrInvalid", a, err)
		}
		if err := a.CheckDial(); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("%#v.CheckDial() = %v, want ErrInvalid", a, err)
		}
	}
	if got := (Address{}).String(); got != "invalid" {
		t.Errorf("zero Address String() = %q", got)
	}
	if got := (Address{}).Network(); got != "" {
		t.Errorf("zero Address Network() = %q", got)
	}
	if got := Kind(99).String(); got != "invalid" {
		t.Errorf("Kind(99).String() = %q", got)
	}
}

func TestHybridPath(t *testing.T) {
	tests := []struct {
		socket string
		port   uint32
		want   string
	}{
		{"/run/vmcred/vm1/vsock.sock", 1234, "/run/vmcred/vm1/vsock.sock_1234"},
		{"v.sock", 0, "v.sock_0"},
		{"/x", 4294967295, "/x_4294967295"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := HybridPath(tt.socket, tt.port); got != tt.want {
				t.Errorf("HybridPath(%q, %d) = %q, want %q", tt.socket, tt.port, got, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"vsock:2:1234", "vsock-stream:host:1", "vsock-seqpacket::0", "vsock-dgram:any:7",
		"vsock:-1:3", "unix:/run/x", "unix:@a", "unix:", "vsock:2:010", "vsock:2:4294967295",
		"/path", "vsock:2:1\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		_ = a.CheckDial()
		if err := a.CheckListen(); err != nil && a.IsStream() {
			t.Fatalf("Parse(%q) accepted a stream address CheckListen refuses: %v", s, err)
		}
		again, err := Parse(a.String())
		if err != nil {
			t.Fatalf("Parse(%q).String() = %q does not parse: %v", s, a.String(), err)
		}
		if again != a {
			t.Fatalf("Parse(%q) = %+v, but Parse(String()) = %+v", s, a, again)
		}
	})
}

// TestHybrid: hybrid:SOCKETPATH:PORT names a guest port behind a VMM's
// hybrid-vsock socket; the port is after the last ':', the path follows
// unix:'s rules but cannot be abstract, and it is dialed only.
func TestHybrid(t *testing.T) {
	a, err := Parse("hybrid:/run/vm/a:b.vsock:730")
	if err != nil {
		t.Fatal(err)
	}
	if a.Kind != Hybrid || a.Path != "/run/vm/a:b.vsock" || a.Port != 730 || a.String() != "hybrid:/run/vm/a:b.vsock:730" {
		t.Errorf("Parse = %+v (%s)", a, a)
	}
	if err := a.CheckDial(); err != nil {
		t.Errorf("CheckDial = %v", err)
	}
	if err := a.CheckListen(); err == nil {
		t.Errorf("CheckListen accepted a hybrid address")
	}
	for _, bad := range []string{"hybrid:/x", "hybrid::730", "hybrid:@abs:730", "hybrid:/x:", "hybrid:/x:07"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted it", bad)
		}
	}
	if a, _ := Parse("hybrid:/x:0"); a.CheckDial() == nil {
		t.Errorf("CheckDial accepted port 0")
	}
	for _, tc := range []struct {
		in   string
		want bool
	}{{"vsock:1:730", true}, {"vsock::1023", true}, {"vsock::1024", false}, {"vsock::0", false}, {"unix:/x", false}, {"hybrid:/x:730", false}} {
		a, err := Parse(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.IsPrivileged(); got != tc.want {
			t.Errorf("IsPrivileged(%s) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
