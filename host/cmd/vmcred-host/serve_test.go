package main

import (
	"strings"
	"testing"
	"time"

	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

func TestServeUsage(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--listen", "unix:/x", "--runtime-dir", "/r"},
		{"serve", "--vm", "v", "--runtime-dir", "/r"},
		{"serve", "--vm", "v", "--listen", "unix:/x"},
		{"serve", "--vm", "v", "--listen", "vsock-dgram:2:5", "--runtime-dir", "/r"},
		{"serve", "--vm", "v", "--listen", "tcp:1", "--runtime-dir", "/r"},
		{"wait"},
		{"wait", "--vm", "a/b"},
	} {
		h := newHarness(t)
		if code := h.run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, h.log.String())
		}
	}
}

// TestTokenlessNeedsExpectCID: a manifest without a token (cloud-hypervisor
// without --ch-api) is served on AF_VSOCK only to an expected CID.
func TestTokenlessNeedsExpectCID(t *testing.T) {
	st, err := hostchannel.NewState("v", [manifest.NonceSize]byte{}, credential.Secret{}, "vsock-stream:2:5", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	vs := address.Address{Kind: address.Vsock, CID: address.CIDAny, Port: 5}
	if err := checkTokenless(st, vs, 0); err == nil || !strings.Contains(err.Error(), "--expect-cid") {
		t.Errorf("vsock without --expect-cid: %v", err)
	}
	if err := checkTokenless(st, vs, 3); err != nil {
		t.Errorf("vsock with --expect-cid: %v", err)
	}
	if err := checkTokenless(st, address.Address{Kind: address.Unix, Path: "/x_5"}, 0); err != nil {
		t.Errorf("unix: %v", err)
	}
}

func TestGuestDials(t *testing.T) {
	if got := guestDials(address.Address{Kind: address.Vsock, CID: address.CIDAny, Port: 41234}); got != "vsock-stream:2:41234" {
		t.Errorf("vsock: %s", got)
	}
	if got := guestDials(address.Address{Kind: address.Unix, Path: "/run/x.sock"}); got != "unix:/run/x.sock" {
		t.Errorf("unix: %s", got)
	}
}
