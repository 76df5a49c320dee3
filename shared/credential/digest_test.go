package credential

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"testing"
)

// TestSHA256MatchesSum256 checks the helper against crypto/sha256 for every
// tail length and both padding cases (one or two final blocks).
func TestSHA256MatchesSum256(t *testing.T) {
	for _, n := range []int{0, 1, 31, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 20 << 10, 20<<10 + 17} {
		b := make([]byte, n)
		rand.Read(b)
		if got, want := SHA256(b), sha256.Sum256(b); got != want {
			t.Errorf("%d bytes: SHA256 = %x, want %x", n, got, want)
		}
	}
}

// TestSHA256LeavesNoTail checks that the digest's state holds no byte of
// the value afterwards: sha256.Sum256 keeps the last len%64 bytes in the
// digest's block buffer (shown first, so the test is known to look at the
// right place), the helper keeps none.
func TestSHA256LeavesNoTail(t *testing.T) {
	b := make([]byte, 64*3+48)
	rand.Read(b)
	tail := b[len(b)-12:]
	stdlib := sha256.New()
	stdlib.Write(b)
	state, err := stdlib.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(state, tail) {
		t.Fatal("crypto/sha256's state does not hold the value's tail: the premise of SHA256 changed, check the helper")
	}
	h := sha256.New()
	sum := sumBlocks(h, b)
	if sum != sha256.Sum256(b) {
		t.Fatal("sumBlocks gives the wrong digest")
	}
	state, err = h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// magic, chaining value, block buffer, length
	buf := state[4+sha256.Size : 4+sha256.Size+sha256.BlockSize]
	if !bytes.Equal(buf, make([]byte, sha256.BlockSize)) {
		t.Errorf("the digest's block buffer is not empty after SHA256: % x", buf)
	}
	for w := 0; w+8 <= len(b); w++ {
		if bytes.Contains(state, b[w:w+8]) {
			t.Fatalf("the digest's state holds bytes %d..%d of the value", w, w+8)
		}
	}
}

// TestSecretSHA256 checks that Secret.SHA256 is the SHA-256 of the value.
func TestSecretSHA256(t *testing.T) {
	v := []byte("a value of 27 bytes, say it")
	if got, want := NewSecret(v).SHA256(), sha256.Sum256(v); got != want {
		t.Errorf("SHA256 = %x, want %x", got, want)
	}
}
