package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"net"
	"testing"
	"time"

	proto "github.com/vmcred/vmcred/shared/channel"
)

// FuzzAgentSession feeds arbitrary bytes, as the host's side of a session
// after the agent's CHALLENGE, to the agent's session handler: it must
// never panic or hang, never write the credstore (no input can carry a
// signature over a challenge it has not seen), and answer only with
// frames of the protocol.
func FuzzAgentSession(f *testing.F) {
	var hdr bytes.Buffer
	_ = proto.NewHost(&hdr).WriteManifest([]byte("VMCE\x02\x00VMCM\x02\x00\x01v\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00"))
	f.Add(hdr.Bytes())
	f.Add([]byte{byte(proto.TypeManifest), 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{byte(proto.TypeCredentials), 0, 0, 0, 4, 0, 0, 0, 0})
	f.Add([]byte{})
	pub, _, _ := ed25519.GenerateKey(nil)
	store := f.TempDir() + "/credstore-never-written"
	f.Fuzz(func(t *testing.T, host []byte) {
		a, err := New(Config{VM: "v", TrustKeys: []ed25519.PublicKey{pub}, Credstore: store, Now: func() time.Time { return issued }},
			Options{HandshakeTimeout: time.Second, SessionTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		c := &scriptConn{in: bytes.NewReader(host)}
		a.handle(context.Background(), c)
		out := c.out.Bytes()
		if !bytes.HasPrefix(out, []byte(proto.Magic)) {
			t.Fatalf("the agent did not open with Magic")
		}
		r := proto.NewHost(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(out[len(proto.Magic):]), io.Discard})
		if _, err := r.ReadChallenge(); err != nil {
			t.Fatalf("the agent's first frame: %v", err)
		}
		for {
			typ, _, err := r.ReadFrame()
			if err != nil {
				break
			}
			if typ != proto.TypeReport && typ != proto.TypeError {
				t.Fatalf("the agent sent a %s frame", typ)
			}
		}
		if a.Generation() != 0 {
			t.Fatalf("the generation moved without a signed manifest")
		}
	})
}

// scriptConn is a net.Conn whose peer sends in and then closes: the
// agent's writes collect in out. Deadlines are irrelevant (reads never
// block).
type scriptConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.UnixAddr{Net: "unix"} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Net: "unix"} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
