//go:build vmtest

package vm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/integration/testenv"
)

// File types for archive entries (the S_IF* bits of a cpio newc mode).
const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChar = 0o020000
)

// entry is one file, folder, symlink or device node of an initramfs.
type entry struct {
	mode         uint32 // type and permission bits
	data         []byte // file contents, or the symlink's target
	major, minor uint32 // device numbers of a node
}

// archive is an initramfs under construction: paths (relative, no leading
// slash) to entries. Written in path order, so every folder comes before
// what it holds, as the kernel's unpacker needs.
type archive map[string]entry

// dir adds folder p and its parents.
func (a archive) dir(p string) {
	for p != "." && p != "/" && p != "" {
		if _, ok := a[p]; !ok {
			a[p] = entry{mode: modeDir | 0o755}
		}
		p = path.Dir(p)
	}
}

// file adds a regular file with permission bits perm, and its parents.
func (a archive) file(p string, perm uint32, data []byte) {
	a.dir(path.Dir(p))
	a[p] = entry{mode: modeFile | perm, data: data}
}

// symlink adds p pointing at target.
func (a archive) symlink(p, target string) {
	a.dir(path.Dir(p))
	a[p] = entry{mode: modeLink | 0o777, data: []byte(target)}
}

// node adds a character device.
func (a archive) node(p string, perm, major, minor uint32) {
	a.dir(path.Dir(p))
	a[p] = entry{mode: modeChar | perm, major: major, minor: minor}
}

// copyFile adds the file at src (on this machine) as p.
func (a archive) copyFile(p string, perm uint32, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	a.file(p, perm, b)
	return nil
}

// writeTo writes the archive in the "newc" cpio format (what the kernel
// unpacks as an initramfs), uncompressed: under TCG, decompressing costs
// more guest time than the larger file costs QEMU to load.
func (a archive) writeTo(w io.Writer) error {
	names := make([]string, 0, len(a))
	for n := range a {
		names = append(names, n)
	}
	sort.Strings(names)
	cw := &cpioWriter{w: w}
	for i, n := range names {
		e := a[n]
		cw.header(uint32(i+1), n, e.mode, 1, len(e.data), e.major, e.minor)
		cw.write(e.data)
		cw.pad()
	}
	cw.header(0, "TRAILER!!!", 0, 1, 0, 0, 0)
	cw.pad()
	return cw.err
}

// cpioWriter writes newc records and remembers the first error.
type cpioWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	var n int
	n, c.err = c.w.Write(b)
	c.n += int64(n)
}

// pad aligns the stream to 4 bytes.
func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) header(ino uint32, name string, mode, nlink uint32, size int, major, minor uint32) {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with its NUL), check.
	c.write(fmt.Appendf(nil, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, major, minor, len(name)+1, 0))
	c.write(append([]byte(name), 0))
	c.pad()
}

// TestArchive checks the cpio writer against GNU cpio's reader, when cpio
// is installed (setup.sh installs it).
func TestArchive(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		testenv.SkipOrFail(t, "cpio not found: run integration/vm/setup.sh --tier1")
	}
	a := archive{}
	a.file("bin/tool", 0o755, []byte("#!/bin/sh\n"))
	a.file("case/expect", 0o644, []byte("odd length"))
	a.file("case/empty", 0o400, nil)
	a.symlink("etc/systemd/system/multi-user.target.wants/x.service", "../x.service")
	a.node("dev/console", 0o600, 5, 1)
	var buf bytes.Buffer
	if err := a.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 4", buf.Len())
	}
	cmd := exec.Command(cpio, "-t", "-v", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	listing := string(out)
	for _, want := range []string{
		"drwxr-xr-x", " bin\n", "-rwxr-xr-x", " bin/tool\n", "-r--------", " case/empty\n",
		" 10 ", " case/expect\n", "crw-------", "5,", "dev/console",
		"x.service -> ../x.service",
	} {
		if !strings.Contains(listing, want) {
			t.Errorf("cpio -t -v output lacks %q:\n%s", want, listing)
		}
	}
	// Folders precede their contents.
	var order []string
	for _, l := range strings.Split(strings.TrimSpace(listing), "\n") {
		l, _, _ = strings.Cut(l, " -> ")
		f := strings.Fields(l)
		order = append(order, f[len(f)-1])
	}
	seen := map[string]bool{}
	for _, n := range order {
		if d := path.Dir(n); d != "." && !seen[d] {
			t.Errorf("%s listed before its folder %s", n, d)
		}
		seen[n] = true
	}
}
