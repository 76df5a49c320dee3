package credstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestMaxSize: the 1 MiB default holds for firmware credentials; the
// agent raises it (Options.MaxSize) for channel ones.
func TestMaxSize(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	dir := filepath.Join(shmDir(t), "store")
	s := openStore(t, dir, testOpts(t))
	_, err := s.Replace(entries("big", big))
	var ee *EntryError
	if !errors.As(err, &ee) || !strings.Contains(err.Error(), "1048576-byte limit") {
		t.Fatalf("default store took %d bytes: %v", len(big), err)
	}
	s.Close()

	opts := testOpts(t)
	opts.MaxSize = 4 << 20
	s = openStore(t, dir, opts)
	mustReplace(t, s, entries("big", big))
	checkContent(t, dir, "big", big)
	if _, err := s.Replace(entries("big", big+strings.Repeat("y", 1<<20+1))); err == nil {
		t.Error("a value over Options.MaxSize was accepted")
	}
}
