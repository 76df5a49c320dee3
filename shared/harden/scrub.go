package harden

// scrubFrame zeroes a stack frame of 8 KiB below its caller: the dead
// frames of the work just done (copies of digests, hashing state) are
// overwritten.
//
//go:noinline
func scrubFrame() {
	var frame [8 << 10]byte
	sink(frame[:])
}

// zeroVectorRegisters copies zeros through the vector registers memmove
// uses: 256 bytes load X0-X15, 1 KiB loads Y0-Y4 and X5-X12 (amd64's
// memmove, AVX path). A value copied before leaves its bytes there until
// something else overwrites them.
//
//go:noinline
func zeroVectorRegisters() {
	var src, dst [1024]byte
	copy(dst[:256], src[:256])
	copy(dst[:], src[:])
	sink(dst[:])
}

//go:noinline
func sink(b []byte) { _ = b[len(b)-1] }
