package plan

import (
	"errors"
	"strings"
	"testing"
)

// TestChannelOverOneMiB: with MaxChannelSize and --overflow channel, a
// credential over systemd's 1 MiB goes by channel; without either, or
// above MaxChannelSize, it is refused as before.
func TestChannelOverOneMiB(t *testing.T) {
	huge := []Input{{Name: "small", Size: 10, Secret: true}, {Name: "huge", Size: 4 << 20, Secret: true}}
	p, err := New(huge, Options{Hypervisor: QEMU, Overflow: OverflowChannel, MaxChannelSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	it, _ := p.Item("huge")
	if it.Delivery != DeliveryChannel || !it.Overflowed || !strings.Contains(it.Reason, "1048576-byte limit") {
		t.Errorf("huge: %+v", it)
	}
	if small, _ := p.Item("small"); small.Delivery != DeliverySMBIOS {
		t.Errorf("small went by %s", small.Delivery)
	}
	if p.Usage.ChannelBytes != 4<<20 || p.Usage.FirmwareBytes != 10 {
		t.Errorf("usage %+v", p.Usage)
	}
	for _, tt := range []struct {
		name string
		opts Options
		hint string
	}{
		{"no overflow", Options{Hypervisor: QEMU, MaxChannelSize: 64 << 20}, "--overflow channel"},
		{"over the channel limit", Options{Hypervisor: QEMU, Overflow: OverflowChannel, MaxChannelSize: 2 << 20}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(huge, tt.opts)
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tt.hint) {
				t.Errorf("got %v, want ErrTooLarge with %q", err, tt.hint)
			}
		})
	}
}
