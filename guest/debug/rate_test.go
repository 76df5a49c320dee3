//go:build linux

package debug

import (
	"io"
	"os"
	"path/filepath"
	"strings"
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
func TestNoswapLookup(t *testing.T) {
	const (
		shm   = "30 25 0:27 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=1024k\n"
		creds = "41 24 0:35 / /run/credentials/@system ro,nosuid,nodev,noexec,relatime,nosymfollow shared:18 master:3 - tmpfs tmpfs rw,size=1024k,nr_inodes=1024,mode=700,noswap\n"
		vfs   = "42 24 0:36 / /run/x rw,noswap - tmpfs tmpfs rw\n"
		bad   = "50 1 0:50 / /bad rw,relatime shared:1\n"
	)
	makedev := func(major, minor uint64) uint64 {
		return minor&0xff | (major&0xfff)<<8 | (minor&^0xff)<<12 | (major&^0xfff)<<32
	}
	mountinfo := shm + creds + vfs + bad + strings.Replace(creds, "0:35", "0:27", 1)
	look := noswapLookup(func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(mountinfo)), nil })
	for _, tc := range []struct {
		dev  uint64
		want bool
	}{{makedev(0, 27), false}, {makedev(0, 35), true}, {makedev(0, 36), true}, {makedev(0, 50), false}, {makedev(0, 99), false}} {
		if got := look(tc.dev); got != tc.want {
			maj, mnr := devMajorMinor(tc.dev)
			t.Errorf("%d:%d: noswap %v, want %v", maj, mnr, got, tc.want)
		}
	}
	failing := noswapLookup(func() (io.ReadCloser, error) { return nil, os.ErrPermission })
	if failing(makedev(0, 35)) {
		t.Error("an unreadable mountinfo must count as no noswap")
	}
}

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
