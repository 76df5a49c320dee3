// Package address parses and formats the socket addresses vmcred passes
// around: systemd's AF_VSOCK forms (vsock:CID:PORT, vsock-stream:CID:PORT,
// vsock-seqpacket:CID:PORT, vsock-dgram:CID:PORT), used for the session and
// for the vmm.notify_socket credential; unix:PATH, a plain Unix socket
// (what tests use); and hybrid:SOCKETPATH:PORT, a guest port behind the
// hybrid-vsock Unix socket of cloud-hypervisor or Firecracker.
//
// It accepts a strict subset of what systemd's socket_address_parse_vsock
// (src/basic/socket-util.c) accepts, so that every address vmcred writes
// means the same thing to systemd and to vmcred. It is OS-free: host and
// guest packages may import it; opening sockets is the caller's job.
package address

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kind says which socket family and type an Address names.
type Kind uint8

// Kinds. The zero Kind is Invalid, so the zero Address is not usable.
const (
	// Invalid is the zero Kind.
	Invalid Kind = iota
	// Vsock is "vsock:": systemd picks the socket type (datagram first,
	// then seqpacket, then stream). vmcred's channel dials it as a stream.
	Vsock
	// VsockStream is "vsock-stream:", the only type cloud-hypervisor and
	// Firecracker support (systemd#31849).
	VsockStream
	// VsockSeqpacket is "vsock-seqpacket:".
	VsockSeqpacket
	// VsockDgram is "vsock-dgram:".
	VsockDgram
	// Unix is "unix:PATH", an AF_UNIX stream socket.
	Unix
	// Hybrid is "hybrid:SOCKETPATH:PORT": the Unix socket of a
	// cloud-hypervisor or Firecracker VM's vsock device, where the host
	// reaches guest port PORT by writing "CONNECT PORT\n" and reading
	// "OK …\n" (DESIGN §8). Only the host dials it.
	Hybrid
)

// String returns the scheme without its colon ("vsock-stream"), or
// "invalid".
func (k Kind) String() string {
	switch k {
	case Vsock:
		return "vsock"
	case VsockStream:
		return "vsock-stream"
	case VsockSeqpacket:
		return "vsock-seqpacket"
	case VsockDgram:
		return "vsock-dgram"
	case Unix:
		return "unix"
	case Hybrid:
		return "hybrid"
	}
	return "invalid"
}

// Well-known AF_VSOCK context IDs and ports (linux/vm_sockets.h).
const (
	CIDHypervisor uint32 = 0          // VMADDR_CID_HYPERVISOR, name "hypervisor"
	CIDLocal      uint32 = 1          // VMADDR_CID_LOCAL, name "local"
	CIDHost       uint32 = 2          // VMADDR_CID_HOST, name "host": the guest's view of the host
	CIDAny        uint32 = 0xFFFFFFFF // VMADDR_CID_ANY: an empty CID, "any" or "-1"
	PortAny       uint32 = 0xFFFFFFFF // VMADDR_PORT_ANY: systemd refuses it in an address
)

// MaxUnixPathLen is the longest unix: path: sockaddr_un's sun_path holds
// 108 bytes including the terminating NUL. An abstract name ("@name") may
// have this many bytes after the '@'.
const MaxUnixPathLen = 107

// maxQuoted bounds how much of a rejected input an error message repeats.
const maxQuoted = 128

// ErrInvalid is wrapped by every error this package returns.
var ErrInvalid = errors.New("invalid address")

// Error says why an address was refused. Addresses are not secret, so the
// input is repeated (quoted with %q, cut to 128 bytes).
type Error struct {
	Input  string
	Reason string
}

func (e *Error) Error() string {
	in := e.Input
	if len(in) > maxQuoted {
		in = in[:maxQuoted] + "…"
	}
	return fmt.Sprintf("address %q: %s", in, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

// Address is a parsed address. For the vsock kinds CID and Port are set and
// Path is empty; for Unix only Path is set.
type Address struct {
	Kind Kind
	CID  uint32
	Port uint32
	Path string
}

// IsVsock reports whether a is one of the four AF_VSOCK kinds.
func (a Address) IsVsock() bool {
	return a.Kind >= Vsock && a.Kind <= VsockDgram
}

// IsStream reports whether vmcred can carry a byte stream over a: Unix,
// VsockStream, and Vsock, which vmcred (like mdlayher/vsock) dials as a
// stream. Seqpacket and datagram addresses are only for handing to systemd.
func (a Address) IsStream() bool {
	return a.Kind == Unix || a.Kind == Hybrid || a.Kind == Vsock || a.Kind == VsockStream
}

// Network is the Go network name for a: "vsock", "unix", or "" when a is
// invalid.
func (a Address) Network() string {
	switch {
	case a.IsVsock():
		return "vsock"
	case a.Kind == Unix, a.Kind == Hybrid:
		return "unix"
	}
	return ""
}

// String formats a canonically, so that Parse(a.String()) returns a for
// every Address Parse accepts: CIDs in decimal (CIDAny as the empty CID,
// which every systemd that knows vsock accepts), ports in decimal, and
// "unix:" followed by the path as given. This is the exact form to pass as
// vmm.notify_socket, with no trailing newline. An invalid Address formats
// as "invalid".
func (a Address) String() string {
	switch {
	case a.IsVsock():
		cid := ""
		if a.CID != CIDAny {
			cid = strconv.FormatUint(uint64(a.CID), 10)
		}
		return a.Kind.String() + ":" + cid + ":" + strconv.FormatUint(uint64(a.Port), 10)
	case a.Kind == Unix:
		return "unix:" + a.Path
	case a.Kind == Hybrid:
		return "hybrid:" + a.Path + ":" + strconv.FormatUint(uint64(a.Port), 10)
	}
	return "invalid"
}

// Parse parses one of
//
//	vsock:CID:PORT  vsock-stream:CID:PORT  vsock-seqpacket:CID:PORT  vsock-dgram:CID:PORT
//	unix:PATH  hybrid:SOCKETPATH:PORT
//
// CID is "hypervisor" (0), "local" (1), "host" (2), "any" or "-1" or empty
// (CIDAny), or a decimal number. PORT is a decimal number other than
// 4294967295 (VMADDR_PORT_ANY, refused as systemd does); port 0 is valid
// syntax, see CheckListen and CheckDial for what it means.
//
// Numbers must be plain decimal: no sign, no spaces, no leading zeros, no
// "0x". systemd parses them with safe_atou, which is strtoul with base 0, so
// "010" would be port 8 to systemd; refusing such forms keeps vmcred and
// systemd in agreement. A trailing newline, a classic bug when the value
// comes from a file, is refused for the same reason: systemd does not trim
// vmm.notify_socket.
//
// PATH is absolute, relative, or "@name" for the Linux abstract namespace;
// it must be non-empty, at most MaxUnixPathLen bytes (after the '@' for an
// abstract name), and free of NUL and other control bytes. A bare "/path"
// without "unix:" is refused, to keep the scheme explicit. A hybrid
// SOCKETPATH follows the same rules except that it cannot be abstract (a
// VMM's socket is a file); the port is after its last ':'.
func Parse(s string) (Address, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		if strings.HasPrefix(s, "/") || strings.HasPrefix(s, "@") {
			return Address{}, &Error{Input: s, Reason: `no scheme; write "unix:` + s + `" for a Unix socket`}
		}
		return Address{}, &Error{Input: s, Reason: "no scheme; want vsock:CID:PORT, vsock-stream:CID:PORT, vsock-seqpacket:CID:PORT, vsock-dgram:CID:PORT or unix:PATH"}
	}
	kind := Invalid
	for k := Vsock; k <= Hybrid; k++ {
		if k.String() == scheme {
			kind = k
		}
	}
	switch kind {
	case Invalid:
		return Address{}, &Error{Input: s, Reason: fmt.Sprintf("unknown scheme %q; want vsock, vsock-stream, vsock-seqpacket, vsock-dgram, unix or hybrid", scheme)}
	case Hybrid:
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			return Address{}, &Error{Input: s, Reason: "want hybrid:SOCKETPATH:PORT, found no ':' before the port"}
		}
		path, portText := rest[:i], rest[i+1:]
		if reason := checkPath(path); reason != "" {
			return Address{}, &Error{Input: s, Reason: reason}
		}
		if strings.HasPrefix(path, "@") {
			return Address{}, &Error{Input: s, Reason: "a hybrid vsock socket is a file, not an abstract name"}
		}
		port, err := parsePort(portText)
		if err != "" {
			return Address{}, &Error{Input: s, Reason: err}
		}
		return Address{Kind: Hybrid, Path: path, Port: port}, nil
	case Unix:
		a := Address{Kind: Unix, Path: rest}
		if reason := checkPath(rest); reason != "" {
			return Address{}, &Error{Input: s, Reason: reason}
		}
		return a, nil
	}
	cidText, portText, ok := strings.Cut(rest, ":")
	if !ok {
		return Address{}, &Error{Input: s, Reason: "want " + scheme + ":CID:PORT, found no ':' before the port"}
	}
	cid, err := parseCID(cidText)
	if err != "" {
		return Address{}, &Error{Input: s, Reason: err}
	}
	port, err := parsePort(portText)
	if err != "" {
		return Address{}, &Error{Input: s, Reason: err}
	}
	return Address{Kind: kind, CID: cid, Port: port}, nil
}

func parseCID(s string) (uint32, string) {
	switch s {
	case "hypervisor":
		return CIDHypervisor, ""
	case "local":
		return CIDLocal, ""
	case "host":
		return CIDHost, ""
	case "", "any", "-1":
		return CIDAny, ""
	}
	n, reason := parseDecimal(s)
	if reason != "" {
		return 0, "CID " + reason + `; want a decimal number, "hypervisor", "local", "host" or "any"`
	}
	return n, ""
}

func parsePort(s string) (uint32, string) {
	n, reason := parseDecimal(s)
	if reason != "" {
		return 0, "port " + reason + "; want a decimal number"
	}
	if n == PortAny {
		return 0, "port 4294967295 is VMADDR_PORT_ANY, which systemd refuses; use port 0 to listen on any port"
	}
	return n, ""
}

// parseDecimal accepts 0 or [1-9][0-9]* up to 4294967295.
func parseDecimal(s string) (uint32, string) {
	switch {
	case s == "":
		return 0, "is empty"
	case strings.HasSuffix(s, "\n"):
		return 0, "ends in a newline"
	case len(s) > 1 && s[0] == '0':
		return 0, fmt.Sprintf("%q has a leading zero (systemd would read it as octal or hex)", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Sprintf("%q is not a decimal number", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Sprintf("%q is over 4294967295", s)
	}
	return uint32(n), ""
}

func checkPath(p string) string {
	name := p
	if strings.HasPrefix(p, "@") {
		name = p[1:]
	}
	switch {
	case p == "":
		return "empty Unix socket path"
	case name == "":
		return `empty abstract socket name after "@"`
	case len(name) > MaxUnixPathLen:
		return fmt.Sprintf("Unix socket path is %d bytes, over the %d-byte sun_path limit", len(name), MaxUnixPathLen)
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == 0:
			return fmt.Sprintf("Unix socket path has a NUL byte at offset %d", i)
		case c < 0x20 || c == 0x7f:
			return fmt.Sprintf("Unix socket path has control byte 0x%02x at offset %d", c, i)
		}
	}
	return ""
}

// check repeats Parse's checks on an Address built by hand.
func (a Address) check() error {
	switch {
	case a.Kind == Unix:
		if a.CID != 0 || a.Port != 0 {
			return &Error{Input: a.String(), Reason: "a Unix address has no CID or port"}
		}
		if reason := checkPath(a.Path); reason != "" {
			return &Error{Input: a.String(), Reason: reason}
		}
	case a.Kind == Hybrid:
		if a.CID != 0 || strings.HasPrefix(a.Path, "@") {
			return &Error{Input: a.String(), Reason: "a hybrid address has a socket file and a port, no CID"}
		}
		if reason := checkPath(a.Path); reason != "" {
			return &Error{Input: a.String(), Reason: reason}
		}
	case a.IsVsock():
		if a.Path != "" {
			return &Error{Input: a.String(), Reason: "a vsock address has no path"}
		}
		if a.Port == PortAny {
			return &Error{Input: a.String(), Reason: "port 4294967295 is VMADDR_PORT_ANY"}
		}
	default:
		return &Error{Input: a.String(), Reason: fmt.Sprintf("kind %d is not a known address kind", a.Kind)}
	}
	return nil
}

// CheckDial reports whether vmcred's channel (a byte stream) can dial a:
// the address must be valid and a stream (see IsStream); a vsock CID must
// not be CIDAny, which systemd's sd_notify refuses too (EINVAL); and a vsock
// port must not be 0, which a vmcred listener takes to mean "any port", so
// no vmcred listener is ever on port 0.
func (a Address) CheckDial() error {
	if err := a.check(); err != nil {
		return err
	}
	if !a.IsStream() {
		return &Error{Input: a.String(), Reason: "vmcred's channel is a byte stream; use vsock-stream:, vsock: or unix:"}
	}
	if a.IsVsock() && a.CID == CIDAny {
		return &Error{Input: a.String(), Reason: "cannot dial CID ANY (empty CID); name the peer, e.g. 2 for the host"}
	}
	if (a.IsVsock() || a.Kind == Hybrid) && a.Port == 0 {
		return &Error{Input: a.String(), Reason: "cannot dial port 0; it means any port when listening"}
	}
	return nil
}

// CheckListen reports whether vmcred's channel server can listen on a: the
// address must be valid and a stream (see IsStream). Port 0 means "let the
// kernel pick any free port" (mdlayher/vsock passes VMADDR_PORT_ANY for it);
// the caller reads the real port back from the listener and advertises that.
// CIDAny binds every local CID, as LXD does (canonical/lxd#12404).
func (a Address) CheckListen() error {
	if err := a.check(); err != nil {
		return err
	}
	if !a.IsStream() {
		return &Error{Input: a.String(), Reason: "vmcred's channel is a byte stream; use vsock-stream:, vsock: or unix:"}
	}
	if a.Kind == Hybrid {
		return &Error{Input: a.String(), Reason: "a hybrid address is only dialed (by the host, through the VMM); listen on vsock:PORT in the guest or unix:PATH"}
	}
	return nil
}

// PrivilegedPorts is the highest privileged vsock port: binding a port at
// or below it needs CAP_NET_BIND_SERVICE in the initial user namespace
// (Linux __vsock_bind_connectible), so a listener there is guest root's.
const PrivilegedPorts = 1023

// IsPrivileged reports whether a is an AF_VSOCK address whose port only a
// privileged process can bind (1 to PrivilegedPorts; port 0 means any port
// and is not).
func (a Address) IsPrivileged() bool {
	return a.IsVsock() && a.Port >= 1 && a.Port <= PrivilegedPorts
}

// HybridPath is the host-side Unix socket on which cloud-hypervisor and
// Firecracker ("hybrid vsock") deliver a guest's connection to vsock port
// port: the VMM's vsock socket path, "_", and the port in decimal.
func HybridPath(socket string, port uint32) string {
	return socket + "_" + strconv.FormatUint(uint64(port), 10)
}
