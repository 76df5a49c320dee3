//go:build linux

package credstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/integration/testenv"
)

// makedev is glibc's gnu_dev_makedev, the inverse of devMajorMinor.
func makedev(major, minor uint64) uint64 {
	return minor&0xff | (major&0xfff)<<8 | (minor&^0xff)<<12 | (major&^0xfff)<<32
}

func TestDevMajorMinor(t *testing.T) {
	tests := []struct {
		dev          uint64
		major, minor uint64
	}{
		{0x801, 8, 1},              // sda1
		{0x1b, 0, 27},              // an anonymous device, as tmpfs gets
		{0x10010300, 259, 0x10000}, // nvme: minor bits above 8 land at bit 20
		{makedev(0xabcde, 0x123456), 0xabcde, 0x123456},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%#x", tc.dev), func(t *testing.T) {
			maj, mnr := devMajorMinor(tc.dev)
			if d := cmp.Diff([2]uint64{tc.major, tc.minor}, [2]uint64{maj, mnr}); d != "" {
				t.Errorf("devMajorMinor (-want +got):\n%s", d)
			}
			if got := makedev(maj, mnr); got != tc.dev {
				t.Errorf("makedev(%d, %d) = %#x, want %#x", maj, mnr, got, tc.dev)
			}
		})
	}
}

func TestMountNoswap(t *testing.T) {
	const (
		shm   = "30 25 0:27 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=1024k\n"
		creds = "41 24 0:35 / /run/credentials/@system ro,nosuid,nodev,noexec,relatime,nosymfollow shared:18 master:3 - tmpfs tmpfs rw,size=1024k,nr_inodes=1024,mode=700,noswap\n"
		vfs   = "42 24 0:36 / /run/x rw,noswap - tmpfs tmpfs rw\n"
		root  = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
		bad   = "50 1 0:50 / /bad rw,relatime shared:1\n"
	)
	tests := []struct {
		name      string
		mountinfo string
		dev       uint64
		want      bool
		wantErr   string
	}{
		{"no noswap", root + shm, makedev(0, 27), false, ""},
		{"noswap in superblock options", root + shm + creds, makedev(0, 35), true, ""},
		{"noswap in mount options", vfs, makedev(0, 36), true, ""},
		{"first match wins", strings.Replace(creds, "0:35", "0:27", 1) + shm, makedev(0, 27), true, ""},
		{"first match wins, other order", shm + strings.Replace(creds, "0:35", "0:27", 1), makedev(0, 27), false, ""},
		{"no prefix match", strings.Replace(creds, "noswap", "noswapx", 1), makedev(0, 35), false, ""},
		{"device absent", root + shm, makedev(0, 99), false, "no mount of device 0:99"},
		{"malformed line", bad, makedev(0, 50), false, "malformed mountinfo line for 0:50"},
		{"empty", "", makedev(0, 1), false, "no mount of device 0:1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mountNoswap(strings.NewReader(tc.mountinfo), tc.dev)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("mountNoswap = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestNoswapLookup: the first line per device decides, answers are
// cached per device, and an unreadable mountinfo counts as no noswap.
func TestNoswapLookup(t *testing.T) {
	const (
		shm   = "30 25 0:27 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=1024k\n"
		creds = "41 24 0:35 / /run/credentials/@system ro,nosuid,nodev,noexec,relatime,nosymfollow shared:18 master:3 - tmpfs tmpfs rw,size=1024k,nr_inodes=1024,mode=700,noswap\n"
		vfs   = "42 24 0:36 / /run/x rw,noswap - tmpfs tmpfs rw\n"
		bad   = "50 1 0:50 / /bad rw,relatime shared:1\n"
	)
	mountinfo := shm + creds + vfs + bad + strings.Replace(creds, "0:35", "0:27", 1)
	opens := 0
	look := NoswapLookup(func() (io.ReadCloser, error) {
		opens++
		return io.NopCloser(strings.NewReader(mountinfo)), nil
	})
	for _, tc := range []struct {
		dev  uint64
		want bool
	}{{makedev(0, 27), false}, {makedev(0, 35), true}, {makedev(0, 36), true}, {makedev(0, 50), false}, {makedev(0, 99), false}} {
		if got := look(tc.dev); got != tc.want {
			maj, mnr := devMajorMinor(tc.dev)
			t.Errorf("%d:%d: noswap %v, want %v", maj, mnr, got, tc.want)
		}
	}
	look(makedev(0, 35))
	if opens != 5 {
		t.Errorf("mountinfo opened %d times for 5 devices and a repeat, want 5", opens)
	}
	failing := NoswapLookup(func() (io.ReadCloser, error) { return nil, os.ErrPermission })
	if failing(makedev(0, 35)) {
		t.Error("an unreadable mountinfo must count as no noswap")
	}
}

// The real mountinfo has a line for the device of a real directory: the
// decoding of st_dev matches the kernel's.
func TestMountNoswapRealDevice(t *testing.T) {
	for _, dir := range []string{shmDir(t), "/"} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := idOf(fi)
		f, err := os.Open(mountinfoPath)
		if err != nil {
			testenv.SkipOrFail(t, "no %s: %v (mount /proc)", mountinfoPath, err)
		}
		if _, err := mountNoswap(f, id.dev); err != nil {
			t.Errorf("mountNoswap for %s (dev %#x): %v", dir, id.dev, err)
		}
		f.Close()
	}
}

// fakeMountinfo returns an opener of a mountinfo with one tmpfs line for
// dir's device, with extra superblock options.
func fakeMountinfo(t *testing.T, dir, opts string) func() (io.ReadCloser, error) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := idOf(fi)
	maj, mnr := devMajorMinor(id.dev)
	line := fmt.Sprintf("30 25 %d:%d / %s rw,relatime - tmpfs tmpfs rw%s\n", maj, mnr, dir, opts)
	return func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(line)), nil }
}

func TestListRatings(t *testing.T) {
	dir := filepath.Join(shmDir(t), "credstore")
	s := openStore(t, dir, testOpts(t))
	mustReplace(t, s, entries("a", "value-a", "b", "value-bb"))
	for name, mode := range map[string]fs.FileMode{"loose": 0o600, "group": 0o440, "zero": 0, "exec": 0o500} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	// Skipped, as systemd-creds skips them: not regular, or not valid names.
	os.Mkdir(filepath.Join(dir, "subdir"), 0o700)
	os.Symlink("a", filepath.Join(dir, "link"))
	os.WriteFile(filepath.Join(dir, tempPrefix+"STAGED"), []byte("x"), 0o400)
	os.WriteFile(filepath.Join(dir, "bad:name"), []byte("x"), 0o400)

	files := func(inMemory Security) []FileInfo {
		return []FileInfo{
			{Name: "a", Size: 7, Mode: 0o400, Filesystem: Tmpfs, Security: inMemory},
			{Name: "b", Size: 8, Mode: 0o400, Filesystem: Tmpfs, Security: inMemory},
			{Name: "exec", Size: 1, Mode: 0o500, Filesystem: Tmpfs, Security: Insecure},
			{Name: "group", Size: 1, Mode: 0o440, Filesystem: Tmpfs, Security: Insecure},
			{Name: "loose", Size: 1, Mode: 0o600, Filesystem: Tmpfs, Security: Insecure},
			{Name: "zero", Size: 1, Mode: 0, Filesystem: Tmpfs, Security: inMemory},
		}
	}
	unreadable := func() (io.ReadCloser, error) { return nil, errors.New("no /proc") }
	tests := []struct {
		name      string
		mountinfo func() (io.ReadCloser, error)
		want      []FileInfo
	}{
		{"tmpfs noswap", fakeMountinfo(t, dir, ",size=1k,noswap"), files(Secure)},
		{"tmpfs swappable", fakeMountinfo(t, dir, ",size=1k"), files(Weak)},
		{"mountinfo unreadable", unreadable, files(Weak)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := list(dir, tc.mountinfo)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("list (-want +got):\n%s", d)
			}
		})
	}
}

// systemd-creds rates a 0400 file on a persistent filesystem "weak", not
// "insecure"; so does List.
func TestListPersistent(t *testing.T) {
	dir := persistentDir(t)
	kind, _ := FilesystemKind(dir)
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("value-a"), 0o400); err != nil {
		t.Fatal(err)
	}
	got, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []FileInfo{{Name: "a", Size: 7, Mode: 0o400, Filesystem: kind, Security: Weak}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("List (-want +got):\n%s", d)
	}
}

func TestListEmptyAndMissing(t *testing.T) {
	got, err := List(shmDir(t))
	if err != nil || got == nil || len(got) != 0 {
		t.Errorf("List(empty dir) = %v, %v; want an empty, non-nil slice", got, err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := List(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("List(missing) err = %v, want ErrNotExist naming %s", err, missing)
	}
}

// Real mounts, read through the real /proc/self/mountinfo (root only).
func TestListRealMounts(t *testing.T) {
	tests := []struct {
		fstype, data string
		kind         Kind
		want         Security
	}{
		{"tmpfs", "size=64k,mode=0700,noswap", Tmpfs, Secure}, // noswap needs Linux 6.3+
		{"tmpfs", "size=64k,mode=0700", Tmpfs, Weak},
		{"ramfs", "mode=0700", Ramfs, Secure},
	}
	for _, tc := range tests {
		t.Run(tc.fstype+":"+tc.data, func(t *testing.T) {
			mnt := mountFS(t, tc.fstype, tc.data)
			if k, err := FilesystemKind(mnt); err != nil || k != tc.kind {
				t.Fatalf("FilesystemKind(%s) = %v, %v; want %v", mnt, k, err, tc.kind)
			}
			dir := filepath.Join(mnt, "credstore")
			s := openStore(t, dir, testOpts(t))
			mustReplace(t, s, entries("a", "value-a"))
			got, err := List(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := []FileInfo{{Name: "a", Size: 7, Mode: 0o400, Filesystem: tc.kind, Security: tc.want}}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("List (-want +got):\n%s", d)
			}
			s.Close()
		})
	}
}

// A file bind-mounted into the store is rated by its own filesystem.
func TestListBindMountedFile(t *testing.T) {
	src := persistentDir(t)
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	dir := shmDir(t)
	srcFile := filepath.Join(src, "a")
	if err := os.WriteFile(srcFile, []byte("value-a"), 0o400); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "a")
	if err := os.WriteFile(target, nil, 0o400); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(srcFile, target, "", syscall.MS_BIND, ""); err != nil {
		testenv.SkipOrFail(t, "bind mount %s: %v", target, err)
	}
	t.Cleanup(func() { syscall.Unmount(target, 0) })
	kind, _ := FilesystemKind(src)
	got, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []FileInfo{{Name: "a", Size: 7, Mode: 0o400, Filesystem: kind, Security: Weak}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("List (-want +got):\n%s", d)
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		kind     Kind
		str      string
		inMemory bool
	}{
		{Tmpfs, "tmpfs", true},
		{Ramfs, "ramfs", true},
		{0xef53, "magic 0xef53", false},
		{0, "magic 0x0", false},
	}
	for _, tc := range tests {
		t.Run(tc.str, func(t *testing.T) {
			if got := tc.kind.String(); got != tc.str {
				t.Errorf("String() = %q, want %q", got, tc.str)
			}
			if got := tc.kind.InMemory(); got != tc.inMemory {
				t.Errorf("InMemory() = %v, want %v", got, tc.inMemory)
			}
		})
	}
	b, err := json.Marshal(FileInfo{Name: "a", Filesystem: Ramfs, Security: Secure})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"Name":"a","Size":0,"Mode":0,"Filesystem":"ramfs","Security":"secure"}`
	if d := cmp.Diff(want, string(b)); d != "" {
		t.Errorf("JSON (-want +got):\n%s", d)
	}
}

func TestFilesystemKind(t *testing.T) {
	if k, err := FilesystemKind(shmDir(t)); err != nil || k != Tmpfs {
		t.Errorf("FilesystemKind(/dev/shm/…) = %v, %v; want tmpfs", k, err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := FilesystemKind(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("FilesystemKind(missing) err = %v, want ErrNotExist naming the path", err)
	}
}

// TestRate: systemd-creds' rating, and noswap asked only for tmpfs.
func TestRate(t *testing.T) {
	for _, tc := range []struct {
		perm   fs.FileMode
		kind   Kind
		noswap bool
		want   Security
		asked  bool
	}{
		{0o400, Ramfs, false, Secure, false},
		{0o400, Tmpfs, true, Secure, true},
		{0o400, Tmpfs, false, Weak, true},
		{0o000, Kind(0xEF53), true, Weak, false},
		{0o600, Ramfs, false, Insecure, false},
		{0o440, Tmpfs, true, Insecure, false},
		{0o404, Kind(0xEF53), false, Insecure, false},
	} {
		asked := false
		got := Rate(tc.perm, tc.kind, func() bool { asked = true; return tc.noswap })
		if got != tc.want || asked != tc.asked {
			t.Errorf("Rate(%v, %v, noswap %v) = %s (noswap asked: %v), want %s (%v)", tc.perm, tc.kind, tc.noswap, got, asked, tc.want, tc.asked)
		}
	}
}
