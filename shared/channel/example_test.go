package channel_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/notify"
)

// A host serving one port for both protocols: sniff, then hand the stream
// to the right reader. Here the "connection" is PID 1's READY message.
func ExampleSniffStream() {
	conn := strings.NewReader("READY=1\nSTATUS=Ready.") // a net.Conn in the host
	kind, first, err := channel.SniffStream(conn)
	if err != nil {
		fmt.Println(err)
		return
	}
	switch kind {
	case channel.Vmcred:
		// s := channel.NewServer(conn); hello, err := s.ReadHello(); …
	case channel.Notify:
		m, err := notify.ReadMessage(io.MultiReader(bytes.NewReader(first), conn))
		if err != nil {
			fmt.Println(err)
			return
		}
		status, _ := m.Status()
		fmt.Printf("notify: ready=%v status=%q\n", m.Ready(), status)
	default:
		fmt.Println("unknown protocol; closing")
	}
	// Output: notify: ready=true status="Ready."
}
