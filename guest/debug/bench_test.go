package debug

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// credstoreOf1000 makes a folder of n 64-byte credentials, mode 0400, on
// tmpfs when /dev/shm is there (as /run/credstore is).
func credstoreOf(b testing.TB, n int) string {
	b.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "vmcred-debug-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	for i := range n {
		v := make([]byte, 64)
		if _, err := rand.Read(v); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("cred-%04d", i)), v, 0o400); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// BenchmarkListCredstore1000 is `vmcred-guest list --credstore DIR` over
// 1000 credentials, without process start-up: list, rate, hash, render.
func BenchmarkListCredstore1000(b *testing.B) {
	dir := credstoreOf(b, 1000)
	in := Inspector{}
	b.ResetTimer()
	for b.Loop() {
		l, err := ListCredstore(in, dir)
		if err != nil || len(l.Credentials) != 1000 {
			b.Fatalf("%d credentials, %v", len(l.Credentials), err)
		}
		if err := l.WriteText(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkListCredstore1000JSON is the same with --json.
func BenchmarkListCredstore1000JSON(b *testing.B) {
	dir := credstoreOf(b, 1000)
	in := Inspector{}
	b.ResetTimer()
	for b.Loop() {
		l, err := ListCredstore(in, dir)
		if err != nil || len(l.Credentials) != 1000 {
			b.Fatalf("%d credentials, %v", len(l.Credentials), err)
		}
		if err := l.WriteJSON(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
