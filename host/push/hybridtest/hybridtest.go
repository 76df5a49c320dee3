// Package hybridtest is a stand-in, for tests, for the host side of
// hybrid vsock as cloud-hypervisor and Firecracker implement it: the VMM
// listens on one Unix socket (the VM's vsock socket, e.g. v.sock); a host
// process that wants guest port P connects there and writes "CONNECT P\n";
// if something in the guest listens on P, the VMM answers "OK <hostport>\n"
// and from then on forwards the stream both ways; if nothing listens, it
// closes the connection without a word (Firecracker docs/vsock.md,
// "Host-Initiated Connections"; cloud-hypervisor docs/vsock.md). Here
// "the guest" is a map from port to a Unix socket path: the simulated
// VM's agent.
//
// It stands for the VMM only; nothing in production uses it.
package hybridtest

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Mux is a running stand-in.
type Mux struct {
	l        net.Listener
	mu       sync.Mutex
	ports    map[uint32]string
	nextPort atomic.Uint32
	wg       sync.WaitGroup
	// Connects counts CONNECT lines, Refused those closed for want of a
	// listener.
	Connects, Refused atomic.Int64
}

// Listen starts a stand-in on the Unix socket path.
func Listen(path string) (*Mux, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	m := &Mux{l: l, ports: map[uint32]string{}}
	// Firecracker numbers host-side ports of host-initiated connections
	// from 1 << 30 up; the number means nothing to the host process.
	m.nextPort.Store(1 << 30)
	m.wg.Add(1)
	go m.serve()
	return m, nil
}

// Route makes guest port port reach the Unix socket at agent ("" removes
// it: nothing listens there any more).
func (m *Mux) Route(port uint32, agent string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if agent == "" {
		delete(m.ports, port)
		return
	}
	m.ports[port] = agent
}

// Close stops accepting and waits for open connections to end.
func (m *Mux) Close() error {
	err := m.l.Close()
	m.wg.Wait()
	return err
}

func (m *Mux) serve() {
	defer m.wg.Done()
	for {
		c, err := m.l.Accept()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.handle(c)
		}()
	}
}

func (m *Mux) handle(c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(c, 64)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	rest, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "CONNECT ")
	if !ok {
		return
	}
	port, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return
	}
	m.Connects.Add(1)
	m.mu.Lock()
	agent := m.ports[uint32(port)]
	m.mu.Unlock()
	if agent == "" {
		m.Refused.Add(1)
		return
	}
	g, err := net.Dial("unix", agent)
	if err != nil {
		m.Refused.Add(1)
		return
	}
	defer g.Close()
	if _, err := io.WriteString(c, "OK "+strconv.FormatUint(uint64(m.nextPort.Add(1)), 10)+"\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(g, br)
		if cw, ok := g.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, g)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}
