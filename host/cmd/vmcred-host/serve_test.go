package main

import (
	"testing"
)

func TestServeUsage(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--listen", "unix:/x"},
		{"serve", "--vm", "v"},
		{"serve", "--vm", "v", "--listen", "vsock-dgram:2:5"},
		{"serve", "--vm", "v", "--listen", "tcp:1"},
		{"serve", "--vm", "v", "--listen", "unix:@abstract"},
		{"serve", "--vm", "v", "--listen", "unix:/x", "--runtime-dir", "/r"},
		{"wait"},
		{"wait", "--vm", "a/b"},
		{"push", "--vm", "v", "--sign-key", "/k"},
		{"push", "--vm", "v", "--connect", "unix:/x"},
		{"push", "--vm", "v", "--connect", "vsock:3:5000", "--sign-key", "/k"},
		{"push", "--connect", "unix:/x", "--sign-key", "/k"},
		{"push", "--vm", "v", "--connect", "unix:/x", "--sign-key", "/k", "--policy", "a=sometimes"},
	} {
		h := newHarness(t)
		if code := h.run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, h.log.String())
		}
	}
}
