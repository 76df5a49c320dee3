//go:build linux

package debug

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/guest/credstore"
)

// TestListHashedAgreesWithCredstoreList: the fused listing rates, sizes
// and skips exactly as credstore.List does, on tmpfs and on the test
// machine's disk, and its digests are hashAll's.
func TestListHashedAgreesWithCredstoreList(t *testing.T) {
	bases := []string{t.TempDir()}
	if d, err := os.MkdirTemp("/dev/shm", "vmcred-rate-test-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
		bases = append(bases, d)
	}
	for _, dir := range bases {
		t.Run(dir, func(t *testing.T) {
			for name, mode := range map[string]os.FileMode{"a": 0o400, "b": 0o440, "c": 0o600, "d": 0o444, "e": 0o000, ".vmcred-tmp:x": 0o400, "bad:name": 0o400} {
				if err := os.WriteFile(filepath.Join(dir, name), []byte("value of "+name), mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(filepath.Join(dir, name), mode); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Symlink("a", filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			want, err := credstore.List(dir)
			if err != nil {
				t.Fatal(err)
			}
			got, sums, skipped, err := listHashed(dir)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("listHashed differs from credstore.List (-want +got):\n%s", diff)
			}
			names := make([]string, 0, len(got))
			for _, fi := range got {
				names = append(names, fi.Name)
			}
			ref := hashAll(dir, names)
			for _, n := range names {
				if sums[n].sum != ref[n].sum || sums[n].size != ref[n].size {
					t.Errorf("%s: digest %s/%d, hashAll %s/%d", n, sums[n].sum, sums[n].size, ref[n].sum, ref[n].size)
				}
			}
			var sk []string
			for _, s := range skipped {
				sk = append(sk, s.Name+": "+s.Reason)
			}
			wantSkipped := []string{".vmcred-tmp:x: not a valid credential name", "bad:name: not a valid credential name", "link: not a regular file", "sub: not a regular file"}
			if diff := cmp.Diff(wantSkipped, sk); diff != "" {
				t.Errorf("skipped (-want +got):\n%s", diff)
			}
		})
	}
}

// TestNoswapLookup mirrors credstore's mountinfo cases.
func TestKeyIDIn(t *testing.T) {
	for _, tt := range []struct{ msg, want string }{
		{"manifest: signed by unknown ed25519 key 0123456789abcdef (trusted: 1)", "0123456789abcdef"},
		{"ed25519 key 0123456789abcdef", "0123456789abcdef"},
		{"ed25519 key 0123456789ABCDEF then ed25519 key fedcba9876543210", "fedcba9876543210"},
		{"ed25519 key 0123456789abcde", ""},
		{"ed25519 key ", ""},
		{"no key here", ""},
		{"", ""},
	} {
		if got := keyIDIn(tt.msg); got != tt.want {
			t.Errorf("keyIDIn(%q) = %q, want %q", tt.msg, got, tt.want)
		}
	}
}
