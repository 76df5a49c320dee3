package manifest

import (
	"crypto/ed25519"
	"fmt"
	"testing"
)

// BenchmarkOpen opens signed manifests with one trusted key.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1, 100, 255} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			env := mustSign(b, mustMarshal(b, manyEntries(b, n)), testKey(1))
			trusted := []ed25519.PublicKey{testPub(1)}
			b.SetBytes(int64(len(env)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Open(env, trusted); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
