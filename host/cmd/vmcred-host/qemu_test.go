package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/host/emit"
	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// q35 is the machine for the SMBIOS tests: smbios-entry-point-type=32
// gives the 32-bit (SMBIOS 2.1) entry point and its 65535-byte limit
// deterministically (QEMU 7.2's q35 defaults to the 64-bit one).
const q35 = "q35,accel=tcg,smbios-entry-point-type=32"

// needQEMU returns qemu-system-x86_64's path, or skips the test with a
// fix-it hint; under CI=true a missing QEMU fails the test instead.
func needQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		msg := "qemu-system-x86_64 not found; install it to run this test: apt-get install qemu-system-x86"
		testenv.SkipOrFail(t, "%s", msg)
	}
	return p
}

// qmp is a QMP session on QEMU's stdio.
type qmp struct {
	in io.Writer
	r  *bufio.Reader
}

// do sends one command and returns the line that answers it (events that
// come first are skipped).
func (q *qmp) do(cmd string) (string, error) {
	if _, err := io.WriteString(q.in, cmd+"\n"); err != nil {
		return "", err
	}
	return q.reply()
}

func (q *qmp) reply() (string, error) {
	for {
		line, err := q.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.Contains(line, `"return"`) || strings.Contains(line, `"error"`) || strings.Contains(line, `"QMP"`) {
			return line, nil
		}
	}
}

// withQEMU starts QEMU with no devices and args (paused with -S if
// paused), negotiates QMP on stdio, runs fn, and quits QEMU. It returns
// fn's error, or an error holding QEMU's stderr if QEMU did not come up.
// QEMU runs under a 30 s deadline and is killed by PID if still there.
func withQEMU(t *testing.T, qemu, machine string, args []string, paused bool, fn func(*qmp) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := []string{"-machine", machine, "-display", "none", "-nodefaults", "-no-user-config"}
	if paused {
		all = append(all, "-S")
	}
	all = append(append(all, args...), "-qmp", "stdio")
	cmd := exec.CommandContext(ctx, qemu, all...)
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		// Kill by PID if a failed step left it running.
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	q := &qmp{in: stdin, r: bufio.NewReader(stdout)}
	fail := func(step string, err error) error {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("qemu (pid %d) %s: %v: %s", pid, step, err, strings.TrimSpace(stderr.String()))
	}
	if _, err := q.reply(); err != nil {
		return fail("greeting", err)
	}
	if _, err := q.do(`{"execute":"qmp_capabilities"}`); err != nil {
		return fail("qmp_capabilities", err)
	}
	if err := fn(q); err != nil {
		return fail("test step", err)
	}
	io.WriteString(stdin, `{"execute":"quit"}`+"\n")
	io.Copy(io.Discard, q.r)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("qemu (pid %d) quit: %v: %s", pid, err, stderr.String())
	}
	return nil
}

// startQEMU starts QEMU paused with args and checks that it came up
// (query-status says "prelaunch").
func startQEMU(t *testing.T, qemu, machine string, args []string) error {
	t.Helper()
	return withQEMU(t, qemu, machine, args, true, func(q *qmp) error {
		line, err := q.do(`{"execute":"query-status"}`)
		if err != nil {
			return err
		}
		if !strings.Contains(line, `"prelaunch"`) {
			return fmt.Errorf("status %s", strings.TrimSpace(line))
		}
		return nil
	})
}

// printedArgs parses pack's line output.
func printedArgs(out string) []string {
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// TestQEMUAcceptsPack starts QEMU with exactly what pack prints: SMBIOS
// path= files (with a ',' in the runtime directory), --inline values (with
// a ',' in a name), and fw_cfg files on the microvm machine type, 16 of
// them, vmcred's cap.
func TestQEMUAcceptsPack(t *testing.T) {
	qemu := needQEMU(t)
	tmp := t.TempDir()
	base := goldenSources(t, tmp)
	many := []string{"--vm", "test-vm"}
	for i := range 15 {
		many = append(many, "--cred", fmt.Sprintf("cred-%02d=file:%s", i, secretFile(t, tmp, fmt.Sprintf("c%d", i), []byte(fmt.Sprintf("value %d, with a comma", i)))))
	}
	tests := []struct {
		name, machine string
		args          []string
		wantFiles     int
	}{
		{"q35 files", q35, append(base, "--hypervisor", "qemu"), 4},
		{"q35 systemd mode", q35, append(base, "--hypervisor", "qemu", "--mode", "systemd"), 4},
		{"q35 inline", q35, append(base, "--hypervisor", "qemu", "--inline", "--static", "a,b=c,d"), 3},
		{"pc files", "pc,accel=tcg", append(base, "--hypervisor", "qemu"), 4},
		{"microvm fw_cfg", "microvm,accel=tcg", append(base, "--hypervisor", "qemu-microvm"), 4},
		{"microvm 16 fw_cfg files", "microvm,accel=tcg", append(many, "--hypervisor", "qemu-microvm"), 16},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := filepath.Join(tmp, fmt.Sprintf("run,%d", i))
			h := newHarness(t)
			if code := h.run(append(append([]string{"pack"}, tt.args...), "--runtime-dir", rt)...); code != 0 {
				t.Fatalf("pack exit %d: %s", code, h.log.String())
			}
			if n := len(listFiles(t, rt)); n != tt.wantFiles {
				t.Errorf("%d payload files, want %d", n, tt.wantFiles)
			}
			if err := startQEMU(t, qemu, tt.machine, printedArgs(h.stdout.String())); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// exactCred returns a credential whose OEM string is exactly n bytes.
func exactCred(t *testing.T, n int) (plan.Input, credential.Secret) {
	t.Helper()
	prefix := oemstring.PrefixVmcred
	b64 := (n - len(prefix) - 2) &^ 3
	name := strings.Repeat("x", n-len(prefix)-1-b64)
	v := credential.NewSecret(bytes.Repeat([]byte{0xa5}, b64/4*3))
	if got := oemstring.FormattedLen(prefix, name, v.Len()); got != n {
		t.Fatalf("exactCred(%d) made %d", n, got)
	}
	return plan.Input{Name: name, Size: v.Len(), Secret: true}, v
}

// packTable plans one credential that makes vmcred's part of the table
// (type 11 + type 127, as smbios.BuildQEMUTable lays it out) exactly
// tableBytes long, with the given reserve, and emits it into a new runtime
// directory. It returns the plan error, or the printed arguments.
func packTable(t *testing.T, tableBytes, reserve int) ([]string, error) {
	t.Helper()
	// 12 bytes of structure around one string and its NUL.
	in, v := exactCred(t, tableBytes-12-1)
	p, err := plan.New([]plan.Input{in}, plan.Options{VM: "t", Hypervisor: plan.QEMU, SMBIOSReserve: reserve})
	if err != nil {
		return nil, err
	}
	if p.Usage.SMBIOSTable != tableBytes {
		t.Fatalf("planned table %d bytes, want %d", p.Usage.SMBIOSTable, tableBytes)
	}
	s, _ := oemstring.Format(oemstring.PrefixVmcred, in.Name, v)
	if tb, err := smbios.BuildQEMUTable([]string{string(s.Reveal())}); err != nil || len(tb) != tableBytes {
		t.Fatalf("smbios.BuildQEMUTable: %d bytes, %v", len(tb), err)
	}
	r, err := emit.Build(p, emit.Values{in.Name: v}, emit.Options{RuntimeDir: filepath.Join(t.TempDir(), "run")})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Write(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := emit.WriteArgs(&out, r.Args, false); err != nil {
		t.Fatal(err)
	}
	return printedArgs(out.String()), nil
}

var tooLong = regexp.MustCompile(`SMBIOS 2\.1 table length (\d+) exceeds 65535`)

// TestQEMUSMBIOSLimit shows that QEMU's own refusal ("SMBIOS 2.1 table
// length N exceeds 65535") happens exactly where the planner says, once the
// reserve is QEMU's own structures: a table the planner accepts at the
// limit starts, one byte more is refused by the planner, and the same table
// forced past the planner is refused by QEMU.
func TestQEMUSMBIOSLimit(t *testing.T) {
	qemu := needQEMU(t)

	// Measure QEMU's own structures (types 0, 1, 3, 4, 16, 17, 19, 32 for
	// this machine): plan a full 65535-byte table with no reserve and read
	// the total QEMU reports.
	args, err := packTable(t, smbios.MaxTableSize, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = startQEMU(t, qemu, q35, args)
	m := tooLong.FindStringSubmatch(fmt.Sprint(err))
	if m == nil {
		t.Fatalf("a 65535-byte OEM table plus QEMU's own structures: want QEMU's size refusal, got %v", err)
	}
	total, _ := strconv.Atoi(m[1])
	reserve := total - smbios.MaxTableSize
	t.Logf("QEMU's own SMBIOS structures on %s: %d bytes (vmcred's default reserve: %d)", q35, reserve, plan.DefaultSMBIOSReserve)
	if reserve <= 0 || reserve > plan.DefaultSMBIOSReserve {
		t.Fatalf("QEMU's own structures take %d bytes: the default reserve of %d does not cover them", reserve, plan.DefaultSMBIOSReserve)
	}

	limit := smbios.MaxTableSize - reserve
	// At the limit: the planner accepts and QEMU starts.
	args, err = packTable(t, limit, reserve)
	if err != nil {
		t.Fatalf("planner refused a table of exactly %d bytes: %v", limit, err)
	}
	if err := startQEMU(t, qemu, q35, args); err != nil {
		t.Fatalf("QEMU refused the table the planner accepted (%d + %d = 65535 bytes): %v", limit, reserve, err)
	}

	// One byte more: the planner refuses, naming the credential and limit.
	_, err = packTable(t, limit+1, reserve)
	if !errors.Is(err, plan.ErrTableTooLarge) || !strings.Contains(err.Error(), fmt.Sprintf("over the limit of %d", limit)) {
		t.Fatalf("planner with a %d-byte table: %v, want a table limit error", limit+1, err)
	}
	// Forced past the planner (a reserve one byte short): QEMU refuses too.
	args, err = packTable(t, limit+1, reserve-1)
	if err != nil {
		t.Fatal(err)
	}
	err = startQEMU(t, qemu, q35, args)
	if m := tooLong.FindStringSubmatch(fmt.Sprint(err)); m == nil || m[1] != "65536" {
		t.Fatalf("QEMU with a 65536-byte table: %v, want its size refusal at 65536", err)
	}
}

// TestQEMUGuestSeesTheStrings boots SeaBIOS (no OS) with what pack prints
// (files in a runtime directory with a ',' in its path, an --inline string
// with a ',' in its name), reads the SMBIOS table the firmware installed
// from guest memory, and compares its type-11 strings with the table
// `pack --hypervisor dmi` writes for the same input: byte for byte, no
// trailing newline, commas unescaped.
func TestQEMUGuestSeesTheStrings(t *testing.T) {
	qemu := needQEMU(t)
	tmp := t.TempDir()
	src := append(goldenSources(t, tmp), "--static", "a,b=c,d", "--mode", "systemd")

	h := newHarness(t)
	if code := h.run(append(append([]string{"pack"}, src...), "--hypervisor", "qemu", "--inline", "--runtime-dir", filepath.Join(tmp, "run,dir"))...); code != 0 {
		t.Fatalf("pack exit %d: %s", code, h.log.String())
	}
	args := printedArgs(h.stdout.String())
	if !strings.Contains(strings.Join(args, " "), "value=io.systemd.credential.binary:a,,b=") {
		t.Fatalf("inline string not escaped: %q", args)
	}
	dmi := filepath.Join(tmp, "want.dmi")
	h2 := newHarness(t)
	if code := h2.run(append(append([]string{"pack"}, src...), "--hypervisor", "dmi", "--out", dmi)...); code != 0 {
		t.Fatalf("pack dmi exit %d: %s", code, h2.log.String())
	}
	wantTable, err := os.ReadFile(dmi)
	if err != nil {
		t.Fatal(err)
	}
	want, err := smbios.ReadTableOEMStrings(wantTable)
	if err != nil || len(want) != 1 {
		t.Fatalf("dmi table: %v %v", want, err)
	}

	var got [][]string
	err = withQEMU(t, qemu, q35, args, false, func(q *qmp) error {
		dump := func(addr, size uint32) ([]byte, error) {
			f := filepath.Join(tmp, fmt.Sprintf("mem-%x", addr))
			os.Remove(f)
			line, err := q.do(fmt.Sprintf(`{"execute":"pmemsave","arguments":{"val":%d,"size":%d,"filename":%q}}`, addr, size, f))
			if err != nil || !strings.Contains(line, `"return"`) {
				return nil, fmt.Errorf("pmemsave: %v %s", err, line)
			}
			return os.ReadFile(f)
		}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			fseg, err := dump(0xF0000, 0x10000)
			if err != nil {
				return err
			}
			for off := 0; off+0x1F <= len(fseg); off += 16 {
				ep := fseg[off : off+0x1F]
				if string(ep[:4]) != "_SM_" || string(ep[0x10:0x15]) != "_DMI_" {
					continue
				}
				length := uint32(ep[0x16]) | uint32(ep[0x17])<<8
				addr := uint32(ep[0x18]) | uint32(ep[0x19])<<8 | uint32(ep[0x1A])<<16 | uint32(ep[0x1B])<<24
				table, err := dump(addr, length)
				if err != nil {
					return err
				}
				got, err = smbios.ReadTableOEMStrings(table)
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
		return errors.New("no SMBIOS 2.1 entry point in the F segment after 15 s")
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("guest table has %d type-11 structures, want QEMU's one", len(got))
	}
	if len(got[0]) != len(want[0]) {
		t.Fatalf("guest sees %d OEM strings, want %d", len(got[0]), len(want[0]))
	}
	for i := range want[0] {
		if got[0][i] != want[0][i] {
			t.Errorf("OEM string %d differs: guest has %d bytes, dmi target %d", i, len(got[0][i]), len(want[0][i]))
		}
	}
	// And systemd's rules read back the static value with its commas.
	p := oemstring.NewParser()
	p.AddStrings("smbios", got[0])
	for _, e := range p.Result().Entries {
		if e.Name == "a,b" && string(e.Value.Reveal()) != "c,d" {
			t.Errorf("a,b = %q", e.Value.Reveal())
		}
	}
	if len(p.Result().Entries) != 5 {
		t.Errorf("parsed %d credentials, want 5; skipped %v", len(p.Result().Entries), p.Result().Skipped)
	}
}

// TestQEMURun runs QEMU under `vmcred-host run`: QEMU gets the payload
// files, stays up, and ends on the forwarded SIGTERM; run exits with its
// status and removes the files.
func TestQEMURun(t *testing.T) {
	qemu := needQEMU(t)
	tmp := t.TempDir()
	rt := filepath.Join(tmp, "run")
	h := newHarness(t)
	args := append([]string{"run"}, goldenSources(t, tmp)...)
	// QMP tells when QEMU is up: its greeting comes from the main loop, after
	// QEMU has installed its SIGTERM handler. (A short folder: sun_path.)
	qmpDir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qmpDir) })
	qmp := filepath.Join(qmpDir, "q.sock")
	args = append(args, "--hypervisor", "qemu-microvm", "--runtime-dir", rt, "--",
		qemu, "-machine", "microvm,accel=tcg", "-S", "-display", "none", "-nodefaults", "-no-user-config",
		"-qmp", "unix:"+qmp+",server=on,wait=off")
	done := make(chan int, 1)
	go func() { done <- h.run(args...) }()
	// If the test fails below, the forwarder kills QEMU (by its PID).
	t.Cleanup(func() {
		select {
		case h.signals <- syscall.SIGKILL:
		default:
		}
	})
	waitQMPGreeting(t, qmp, done, h)
	if n := len(listFiles(t, rt)); n != 4 {
		t.Errorf("%d payload files while QEMU runs, want 4", n)
	}
	h.signals <- syscall.SIGTERM
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(h.stderr.String(), "terminating on signal 15") {
			t.Errorf("exit %d, stderr %q, log %q", code, h.stderr.String(), h.log.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("QEMU did not exit on the forwarded SIGTERM")
	}
	if _, err := os.Stat(rt); !os.IsNotExist(err) {
		t.Errorf("runtime dir left: %v", err)
	}
}

// waitQMPGreeting returns once QEMU's QMP socket at path has greeted and
// answered qmp_capabilities; it fails the test if run exits first or nothing answers
// within 20 s.
func waitQMPGreeting(t *testing.T, path string, done <-chan int, h *harness) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-done:
			t.Fatalf("QEMU exited early with %d: %s %s", code, h.stderr.String(), h.log.String())
		default:
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			// The greeting can come before qemu_init has finished; a
			// command's answer comes from the main loop, after it.
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			r := bufio.NewReader(c)
			greeting, err := r.ReadString('\n')
			if err == nil && strings.Contains(greeting, `"QMP"`) {
				_, err = io.WriteString(c, `{"execute":"qmp_capabilities"}`+"\n")
			}
			var answer string
			if err == nil {
				answer, err = r.ReadString('\n')
			}
			c.Close()
			if err == nil && strings.Contains(answer, `"return"`) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("QEMU's QMP socket did not greet within 20 s")
}
