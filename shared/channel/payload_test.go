package channel

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
)

// TestReadPayloadSizes: readPayload returns exactly n bytes, intact, in a
// buffer of capacity n, whatever n is relative to its growth steps.
func TestReadPayloadSizes(t *testing.T) {
	for _, n := range []int{0, 1, firstChunk - 1, firstChunk, firstChunk + 1, growth * firstChunk, growth*firstChunk + 17, 16<<20 + 17} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 13)
		}
		b, err := readPayload(iotest.HalfReader(bytes.NewReader(data)), n)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if len(b) != n || cap(b) != n || !bytes.Equal(b, data) {
			t.Errorf("n=%d: got len %d cap %d, intact %v", n, len(b), cap(b), bytes.Equal(b, data))
		}
	}
}

// TestReadPayloadGrowsWithArrivals: for a large claim cut short, what
// readPayload allocates stays within a small multiple of the bytes that
// arrived (growth times them for the last buffer, plus the smaller ones
// before it), never the claim.
func TestReadPayloadGrowsWithArrivals(t *testing.T) {
	const claim = MaxFrame
	for _, arrived := range []int{0, 100, firstChunk, firstChunk + 1, 1 << 20, 3 << 20} {
		r := bytes.NewReader(make([]byte, arrived))
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		_, err := readPayload(r, claim)
		runtime.ReadMemStats(&ms1)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("arrived %d: got %v, want io.ErrUnexpectedEOF", arrived, err)
		}
		bound := uint64(max(firstChunk, growth*arrived)) * growth / (growth - 1)
		if got := ms1.TotalAlloc - ms0.TotalAlloc; got > bound+4096 {
			t.Errorf("claim %d, %d bytes arrived: allocated %d, over %d", claim, arrived, got, bound)
		}
	}
}
