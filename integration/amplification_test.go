package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/smbios"
)

// hostileTables are 1 MB DMI tables shaped to make a reader's memory grow
// with the number of strings or structures rather than with the bytes:
// one structure of 500,000 one-byte strings (issue 17, finding 7), the
// same with two-byte strings, 166,000 empty structures of another type,
// and 142,000 type-11 structures of one string each.
func hostileTables() map[string][]byte {
	const size = 1_000_000
	end := []byte{127, 4, 0xff, 0xfe, 0, 0}
	strs := func(n, width int) []string {
		out := make([]string, n)
		for i := range out {
			b := make([]byte, width)
			for j := range b {
				b[j] = byte('a' + (i>>(5*j))%26)
			}
			out[i] = string(b)
		}
		return out
	}
	many := func(typ uint8, formatted []byte, s []string) []byte {
		var b []byte
		for len(b) < size {
			b = smbios.AppendStructure(b, typ, 1, formatted, s)
		}
		return append(b, end...)
	}
	return map[string][]byte{
		"one-byte-strings": append(smbios.AppendStructure(nil, 11, 0x0e00, []byte{0}, strs(500_000, 1)), end...),
		"two-byte-strings": append(smbios.AppendStructure(nil, 11, 0x0e00, []byte{0}, strs(333_333, 2)), end...),
		"empty-structures": many(200, nil, nil),
		"tiny-oem":         many(11, []byte{9}, []string{"x"}),
	}
}

// maxRSS runs bin under GNU time and returns its exit code, its output
// and its peak resident memory in KiB (time's %M, the child's ru_maxrss).
// GNU time, not this process's own rusage of the child: Go starts children
// with vfork, and Linux then counts the parent's peak as the child's.
func maxRSS(t *testing.T, gnuTime, bin string, args ...string) (code int, stdout, stderr []byte, kib int64) {
	t.Helper()
	rss := filepath.Join(t.TempDir(), "maxrss")
	cmd := exec.Command(gnuTime, append([]string{"-f", "%M", "-o", rss, bin}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", filepath.Base(bin), err)
	}
	b, err := os.ReadFile(rss)
	if err != nil {
		t.Fatalf("GNU time wrote no measure: %v", err)
	}
	// The last line is the number; a killed child adds a line before it.
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatalf("GNU time wrote %q", b)
	}
	kib, err = strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatalf("GNU time wrote %q: %v", b, err)
	}
	return code, out.Bytes(), errb.Bytes(), kib
}

// TestFinding7HostileTableMemory is finding 7 of issue 17, measured on
// the real binaries: a 1 MB table of 500,000 one-byte strings made `list`
// peak at 321 MB and `load` at 462 MB (and write 500,003 warning lines
// and a 52 MB status.json). Every hostile shape must now stay under 64
// MiB (64 times the table, the binary's own ~5 MiB included), with a
// bounded log and status file. Peak memory is the kernel's count
// (ru_maxrss, through GNU time), not a timing: no clock is involved.
func TestFinding7HostileTableMemory(t *testing.T) {
	const limitKiB = 64 << 10
	gnuTime := testenv.NeedTool(t, "time", "install GNU time (apt-get install time): it measures the peak memory")
	work := t.TempDir()
	for name, tab := range hostileTables() {
		t.Run(name, func(t *testing.T) {
			dmi := filepath.Join(work, name+".dmi")
			if err := os.WriteFile(dmi, tab, 0o400); err != nil {
				t.Fatal(err)
			}
			code, out, _, kib := maxRSS(t, gnuTime, built.guest, "list", "--dmi-table", dmi)
			t.Logf("list: exit %d, %d bytes out, peak %d KiB", code, len(out), kib)
			if kib > limitKiB || len(out) > 64<<10 {
				t.Errorf("list of a %d-byte table: peak %d KiB, %d bytes printed; want at most %d KiB and 64 KiB", len(tab), kib, len(out), limitKiB)
			}
			status := filepath.Join(work, name+"-status")
			code, _, logb, kib := maxRSS(t, gnuTime, built.guest, "load", "--dmi-table", dmi, "--credstore", filepath.Join(shmDir(t), "credstore"),
				"--status-dir", status, "--system-credentials", "", "--allow-unverified", "--allow-persistent")
			fi, err := os.Stat(filepath.Join(status, "status.json"))
			if err != nil {
				t.Fatalf("load (exit %d) wrote no status: %v\n%s", code, err, logb[:min(len(logb), 2000)])
			}
			lines := strings.Count(string(logb), "\n")
			t.Logf("load: exit %d, %d log lines, status.json %d bytes, peak %d KiB", code, lines, fi.Size(), kib)
			if kib > limitKiB || lines > 100 || fi.Size() > 64<<10 {
				t.Errorf("load of a %d-byte table: peak %d KiB, %d log lines, status.json %d bytes; want at most %d KiB, 100 lines, 64 KiB",
					len(tab), kib, lines, fi.Size(), limitKiB)
			}
		})
	}
}
