package credential

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"hash"
)

// SHA256 is the SHA-256 of b, computed so that no byte of b is left in
// memory the caller cannot clear. sha256.Sum256 (and any hash.Hash) copies
// the last len(b)%64 bytes into the digest's internal block buffer, and
// Sum copies that digest again, on the stack: after the call the tail of
// b lives on in freed heap or dead stack memory, which a later Wipe of b
// does not reach (issue 17, finding 6: a 'last N bytes' copy of a value in
// /proc/PID/mem). Here the digest only ever sees whole 64-byte blocks: the
// full blocks of b in place, then the final padded block(s) built in a
// buffer this function clears; the result is read from the digest's state
// (whose block buffer stayed empty), not from Sum.
func SHA256(b []byte) [sha256.Size]byte {
	h := sha256.New()
	sum := sumBlocks(h, b)
	return sum
}

// sumBlocks is SHA256 with the digest given, so a test can inspect its
// state afterwards.
func sumBlocks(h hash.Hash, b []byte) (sum [sha256.Size]byte) {
	full := len(b) &^ (sha256.BlockSize - 1)
	h.Write(b[:full])
	// The padding of FIPS 180-4 §5.1.1: the tail, a 1 bit, zeros, and the
	// length in bits as a big-endian uint64, ending on a block boundary.
	last := make([]byte, 2*sha256.BlockSize)
	defer clear(last)
	n := copy(last, b[full:])
	last[n] = 0x80
	end := sha256.BlockSize
	if n+1+8 > sha256.BlockSize {
		end = 2 * sha256.BlockSize
	}
	binary.BigEndian.PutUint64(last[end-8:end], uint64(len(b))*8)
	h.Write(last[:end])
	// The state is "sha\x03", the eight 32-bit words of the chaining
	// value big-endian (after the last block: the digest), the block
	// buffer and the length.
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil || len(state) < 4+sha256.Size {
		panic("credential: sha256 state: " + errString(err))
	}
	defer clear(state)
	copy(sum[:], state[4:4+sha256.Size])
	return sum
}

func errString(err error) string {
	if err == nil {
		return "too short"
	}
	return err.Error()
}
