// Command notifysink stands in, inside a tier-2 test guest, for the host's
// end of systemd's vmm.notify_socket (integration/vm/notify_test.go): it
// listens on an AF_VSOCK stream port and takes PID 1's connections (over
// vsock_loopback; from 256 one per message: X_SYSTEMD_UNIT_ACTIVE= for
// each target reached, then READY=1). For each it reads until the peer
// half-closes (the send, shutdown(SHUT_WR), wait-for-close exchange of
// systemd 256 and later), records what it read, and only then closes, as
// a conforming host receiver must: a receiver that waited for more, or
// closed first, would leave PID 1 blocked or its message cut.
//
//	notifysink --port 5001 --out /run/notifysink.out
//
// Each connection appends "message M" (newlines shown as "|") and "eof N"
// (N bytes, then the peer's half-close) to the record. It runs only in
// test guests: this repository never opens AF_VSOCK on a test host.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	port, out := 0, ""
	for i := 1; i+1 < len(os.Args); i += 2 {
		switch os.Args[i] {
		case "--port":
			port, _ = strconv.Atoi(os.Args[i+1])
		case "--out":
			out = os.Args[i+1]
		}
	}
	if port <= 0 || out == "" {
		fmt.Fprintln(os.Stderr, "usage: notifysink --port PORT --out FILE")
		os.Exit(2)
	}
	if err := run(uint32(port), out); err != nil {
		fmt.Fprintf(os.Stderr, "notifysink: %v\n", err)
		os.Exit(3)
	}
}

func run(port uint32, out string) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		return fmt.Errorf("bind vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Printf("notifysink: listening on vsock port %d\n", port)
	for {
		if err := serve(fd, out); err != nil {
			return err
		}
	}
}

// serve takes one connection: reads it to EOF, appends the record, closes.
func serve(fd int, out string) error {
	c, peer, err := unix.Accept(fd)
	if err == unix.EINTR || err == unix.ECONNABORTED {
		return nil
	}
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	defer unix.Close(c) // after the record: the peer's wait ends here
	var msg []byte
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(c, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fmt.Printf("notifysink: read: %v\n", err)
			return nil
		}
		if n == 0 {
			break
		}
		msg = append(msg, buf[:n]...)
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "message %s\neof %d\n", strings.ReplaceAll(strings.TrimRight(string(msg), "\n"), "\n", "|"), len(msg))
	if err := f.Close(); err != nil {
		return err
	}
	if vm, ok := peer.(*unix.SockaddrVM); ok {
		fmt.Printf("notifysink: %d bytes from CID %d, then the peer's half-close\n", len(msg), vm.CID)
	}
	return nil
}
