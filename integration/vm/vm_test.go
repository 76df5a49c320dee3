//go:build vmtest

package vm

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// Markers the guest prints on the serial console (init.sh, the tier-2 units).
const (
	markerPass = "VMCRED-CASE PASS"
	markerFail = "VMCRED-CASE FAIL"
)

// Paths relative to this package's folder (go test runs tests there).
const (
	repoRoot = "../.."
	logDir   = "../logs"
)

// vmEnv is what setup.sh wrote to integration/.cache/vm/env (x86_64) or
// env.aarch64. EFI is the aarch64 UEFI firmware (edk2's QEMU_EFI.fd).
type vmEnv struct {
	QEMU, Busybox, Kernel, KernelConfig, Modules, Rootfs, KernelPackage, EFI string
}

// Guest architectures. Tier 1 boots both; tier 2 is x86_64 only.
const (
	archX86   = "x86_64"
	archArm64 = "aarch64"
)

// guestArch is what an aarch64 guest needs besides the x86_64 defaults in
// suite: its own QEMU, kernel, modules, busybox and binaries built with
// GOARCH=arm64.
type guestArch struct {
	env               vmEnv
	hostBin, guestBin []byte
	busybox           []byte
	modules           map[string][]byte
}

// sysImage is one tier-2 image from env.tier2: a Debian suite, the
// systemd version it carries and the ext4 image file.
type sysImage struct {
	suite, version, path string
	major                int // systemd's major version: 252, 257, ...
}

// suite is what every case shares: the environment, the binaries built for
// this run and a signing key pair. Built once, on first use.
type suite struct {
	env               vmEnv
	host, guest       string // static binaries
	signKey, pubKey   string // vmcred-host keygen output
	hostCmds          map[string]bool
	guestCmds         map[string]bool
	tmp               string
	initScript        []byte
	tscKHz            string
	modules           map[string][]byte // file name in the modules folder → contents
	hostBin, guestBin []byte
	busybox           []byte
	// arm is the aarch64 guest's files, nil (armSkip says why) when
	// setup.sh prepared none.
	arm     *guestArch
	armSkip string
	// images are the tier-2 images, one per systemd version (env.tier2).
	images []sysImage
}

var (
	suiteOnce sync.Once
	theSuite  *suite
	suiteErr  error // a build or setup error (a failure, not a skip)
	suiteSkip string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theSuite != nil {
		os.RemoveAll(theSuite.tmp)
	}
	os.Exit(code)
}

// getSuite returns the shared suite, skipping (or failing in CI) when
// setup.sh has not run.
func getSuite(t *testing.T) *suite {
	t.Helper()
	suiteOnce.Do(func() { theSuite, suiteSkip, suiteErr = newSuite() })
	if suiteSkip != "" {
		testenv.SkipOrFail(t, "%s", suiteSkip)
	}
	if suiteErr != nil {
		t.Fatal(suiteErr)
	}
	return theSuite
}

func cacheDir() string {
	if d := os.Getenv("VMCRED_VM_CACHE"); d != "" {
		return d
	}
	return filepath.Join(repoRoot, "integration", ".cache", "vm")
}

// readEnv parses the KEY=VALUE file setup.sh writes.
func readEnv(file string) (vmEnv, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return vmEnv{}, err
	}
	kv := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	e := vmEnv{
		QEMU: kv["VMCRED_VM_QEMU"], Busybox: kv["VMCRED_VM_BUSYBOX"], Kernel: kv["VMCRED_VM_KERNEL"],
		KernelConfig: kv["VMCRED_VM_KERNEL_CONFIG"], Modules: kv["VMCRED_VM_MODULES"],
		Rootfs: kv["VMCRED_VM_ROOTFS"], KernelPackage: kv["VMCRED_VM_KERNEL_PACKAGE"],
	}
	for name, p := range map[string]string{"qemu": e.QEMU, "busybox": e.Busybox, "kernel": e.Kernel, "modules": e.Modules} {
		if p == "" {
			return e, fmt.Errorf("%s: no %s path", file, name)
		}
		if _, err := os.Stat(p); err != nil {
			return e, fmt.Errorf("%s: %s: %w", file, name, err)
		}
	}
	e.EFI = kv["VMCRED_VM_EFI"]
	return e, nil
}

// readImages parses env.tier2: "SUITE SYSTEMD-VERSION IMAGE" per line.
func readImages(file string) ([]sysImage, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []sysImage
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("%s: bad line %q", file, l)
		}
		v := f[1]
		if _, after, ok := strings.Cut(v, ":"); ok { // an epoch
			v = after
		}
		major, err := strconv.Atoi(v[:len(v)-len(strings.TrimLeft(v, "0123456789"))])
		if err != nil {
			return nil, fmt.Errorf("%s: systemd version %q: %w", file, f[1], err)
		}
		if _, err := os.Stat(f[2]); err != nil {
			return nil, fmt.Errorf("%s: %s image: %w", file, f[0], err)
		}
		out = append(out, sysImage{suite: f[0], version: f[1], path: f[2], major: major})
	}
	return out, nil
}

// goBuild builds pkg statically for goarch into out.
func goBuild(out, pkg, goarch string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s (%s): %v\n%s", pkg, goarch, err, b)
	}
	return nil
}

// readModules reads every file of a modules folder setup.sh filled.
func readModules(dir string) (map[string][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if out[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// newArm64 loads env.aarch64 and builds the arm64 binaries; a missing env
// is a reason to skip the aarch64 cases (returned), a broken one an error.
func newArm64(tmp string) (*guestArch, string, error) {
	env, err := readEnv(filepath.Join(cacheDir(), "env.aarch64"))
	if err != nil {
		return nil, fmt.Sprintf("no aarch64 guest environment (%v): %s", err, setupHint), nil
	}
	if env.EFI == "" {
		return nil, "", fmt.Errorf("env.aarch64: no VMCRED_VM_EFI")
	}
	a := &guestArch{env: env}
	host, guest := filepath.Join(tmp, "vmcred-host.arm64"), filepath.Join(tmp, "vmcred-guest.arm64")
	if err := goBuild(host, "./host/cmd/vmcred-host", "arm64"); err != nil {
		return nil, "", err
	}
	if err := goBuild(guest, "./guest/cmd/vmcred-guest", "arm64"); err != nil {
		return nil, "", err
	}
	if a.hostBin, err = os.ReadFile(host); err != nil {
		return nil, "", err
	}
	if a.guestBin, err = os.ReadFile(guest); err != nil {
		return nil, "", err
	}
	if a.busybox, err = os.ReadFile(env.Busybox); err != nil {
		return nil, "", err
	}
	if a.modules, err = readModules(env.Modules); err != nil {
		return nil, "", err
	}
	return a, "", nil
}

const setupHint = "run integration/vm/setup.sh (or setup.sh --tier1 for tier 1 only; needs root and apt)"

func newSuite() (*suite, string, error) {
	env, err := readEnv(filepath.Join(cacheDir(), "env"))
	if err != nil {
		return nil, fmt.Sprintf("no VM test environment (%v): %s", err, setupHint), nil
	}
	s := &suite{env: env}
	if s.tmp, err = os.MkdirTemp("", "vmcred-vmtest-"); err != nil {
		return nil, "", err
	}
	s.host, s.guest = filepath.Join(s.tmp, "vmcred-host"), filepath.Join(s.tmp, "vmcred-guest")
	for out, pkg := range map[string]string{s.host: "./host/cmd/vmcred-host", s.guest: "./guest/cmd/vmcred-guest"} {
		if err := goBuild(out, pkg, "amd64"); err != nil {
			return nil, "", err
		}
	}
	if s.hostCmds, err = commands(s.host); err != nil {
		return nil, "", err
	}
	if s.guestCmds, err = commands(s.guest); err != nil {
		return nil, "", err
	}
	if s.initScript, err = os.ReadFile("init.sh"); err != nil {
		return nil, "", err
	}
	if s.hostBin, err = os.ReadFile(s.host); err != nil {
		return nil, "", err
	}
	if s.guestBin, err = os.ReadFile(s.guest); err != nil {
		return nil, "", err
	}
	if s.busybox, err = os.ReadFile(env.Busybox); err != nil {
		return nil, "", err
	}
	if s.modules, err = readModules(env.Modules); err != nil {
		return nil, "", err
	}
	if s.arm, s.armSkip, err = newArm64(s.tmp); err != nil {
		return nil, "", err
	}
	if s.images, err = readImages(filepath.Join(cacheDir(), "env.tier2")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, "", err
	}
	if s.hostCmds["keygen"] {
		prefix := filepath.Join(s.tmp, "host")
		if out, err := exec.Command(s.host, "keygen", "--out", prefix).CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("vmcred-host keygen: %v\n%s", err, out)
		}
		s.signKey, s.pubKey = prefix+".key", prefix+".pub"
	}
	s.tscKHz = hostTSCkHz()
	return s, "", nil
}

// commands lists the subcommands a vmcred binary's --help shows, so that a
// case can wait for a command still being written.
func commands(bin string) (map[string]bool, error) {
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("Commands:")) {
		return nil, fmt.Errorf("%s --help: %v\n%s", filepath.Base(bin), err, out)
	}
	cmds := map[string]bool{}
	_, list, _ := strings.Cut(string(out), "Commands:")
	for _, l := range strings.Split(list, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(l, "  ") {
			cmds[f[0]] = true
		}
	}
	return cmds, nil
}

// requireCommands skips (even in CI) a case that needs a command the
// binaries do not have yet, naming it: such a case is waiting for code, not
// for the machine.
func (s *suite) requireCommands(t *testing.T, needs []string) {
	t.Helper()
	var missing []string
	for _, n := range needs {
		bin, cmd, _ := strings.Cut(n, " ")
		have := s.hostCmds
		if bin == "vmcred-guest" {
			have = s.guestCmds
		}
		if !have[cmd] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		t.Skipf("waiting for %s (not in the binaries yet)", strings.Join(missing, ", "))
	}
}

// hostTSCkHz is this machine's TSC frequency, for microvm guests. QEMU's
// TCG reads the guest TSC from the host's, and microvm has neither a PIT
// port 0x61 nor HPET/ACPI PM timer to calibrate it against: without
// tsc_early_khz the kernel hangs at boot, and with a wrong value its
// timers run late (a 4 s boot took 25 s). VMCRED_VM_TSC_KHZ overrides.
func hostTSCkHz() string {
	if v := os.Getenv("VMCRED_VM_TSC_KHZ"); v != "" {
		return v
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
				if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
					return strconv.Itoa(int(mhz * 1000))
				}
			}
		}
	}
	return "2000000"
}

// run runs a command and returns its stdout; a non-zero exit is an error
// carrying stderr.
func run(name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), args[0], err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// cred is one credential a case hands the host: a secret (from a 0400
// file) or a static (--static NAME=VALUE, not secret).
type cred struct {
	name   string
	value  []byte
	static bool
}

// randomCred is a secret of n random bytes.
func randomCred(name string, n int) cred {
	b := make([]byte, n)
	rand.Read(b)
	return cred{name: name, value: b}
}

// seedCreds are the seed's test-vm credentials: three generated secrets and
// two static settings, named as its OEM strings were.
func seedCreds() []cred {
	return []cred{
		randomCred("API_KEY", 32), randomCred("DB_PASSWORD", 24), randomCred("JWT_SECRET", 64),
		{name: "ENVIRONMENT", value: []byte("test"), static: true},
		{name: "CLUSTER", value: []byte("demo"), static: true},
	}
}

// expectFile is /case/expect: "NAME SIZE SHA256" per credential, sorted.
func expectFile(creds []cred) []byte {
	var lines []string
	for _, c := range creds {
		sum := sha256.Sum256(c.value)
		lines = append(lines, fmt.Sprintf("%s %d %s\n", c.name, len(c.value), hex.EncodeToString(sum[:])))
	}
	sort.Strings(lines)
	return []byte(strings.Join(lines, ""))
}

// packArgs writes the secrets as 0400 files under dir and returns the
// arguments for vmcred-host pack's sources.
func packArgs(t *testing.T, dir string, creds []cred) []string {
	t.Helper()
	secrets := filepath.Join(dir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, c := range creds {
		if c.static {
			args = append(args, "--static", c.name+"="+string(c.value))
			continue
		}
		f := filepath.Join(secrets, c.name)
		if err := os.WriteFile(f, c.value, 0o400); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--cred", c.name+"=file:"+f)
	}
	return args
}

// pack runs vmcred-host pack --print0 and returns the hypervisor arguments
// it printed, NUL-separated.
func (s *suite) pack(t *testing.T, args ...string) []string {
	t.Helper()
	out, err := run(s.host, append([]string{"pack", "--print0"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 || out[len(out)-1] != 0 {
		t.Fatalf("pack --print0 output does not end in NUL: %q", out)
	}
	return strings.Split(string(out[:len(out)-1]), "\x00")
}

// initramfs builds the guest's initramfs: busybox, /init, the modules, the
// agent (and, if withHost, vmcred-host for in-guest channel tests) and the
// case's own files, which the caller adds to the returned archive.
func (s *suite) initramfs(withHost bool) archive {
	return s.initramfsFor(archX86, withHost)
}

// initramfsFor is initramfs for a guest of architecture arch.
func (s *suite) initramfsFor(arch string, withHost bool) archive {
	busybox, guestBin, hostBin, modules := s.busybox, s.guestBin, s.hostBin, s.modules
	if arch == archArm64 {
		busybox, guestBin, hostBin, modules = s.arm.busybox, s.arm.guestBin, s.arm.hostBin, s.arm.modules
	}
	a := archive{}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "newroot", "case"} {
		a.dir(d)
	}
	a.node("dev/console", 0o600, 5, 1)
	a.file("init", 0o755, s.initScript)
	a.file("bin/busybox", 0o755, busybox)
	a.file("bin/vmcred-guest", 0o755, guestBin)
	if withHost {
		a.file("bin/vmcred-host", 0o755, hostBin)
	}
	for name, b := range modules {
		a.file("lib/vmcred-modules/"+name, 0o644, b)
	}
	return a
}

// caseEnv renders /case/case.env; values are single-quoted for sh.
func caseEnv(vars map[string]string) []byte {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s='%s'\n", k, strings.ReplaceAll(vars[k], "'", `'\''`))
	}
	return []byte(b.String())
}

// boot is one QEMU run.
type boot struct {
	name    string   // case name; the console goes to integration/logs/NAME.log
	machine string   // "q35" or "microvm" (x86_64), "virt" (aarch64)
	arch    string   // archX86 (""), archArm64
	efi     bool     // aarch64: boot through edk2 (SMBIOS tables), not directly
	rootfs  string   // tier 2: the image, for the log's header
	initrd  archive  // written to a file for -initrd
	args    []string // firmware arguments (pack's), disks
	cmdline string   // added to the kernel command line
	memory  int      // MiB
	timeout time.Duration
	// abort lists console substrings that end the boot as failed at once
	// (a panic, a failed unit) instead of waiting for the timeout.
	abort []string
}

// outcome is what a boot produced.
type outcome struct {
	pass    bool
	reason  string
	console []string // the serial console, line by line
	wall    time.Duration
	log     string // the log file
}

// has reports whether a console line contains sub.
func (o outcome) has(sub string) bool {
	for _, l := range o.console {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// boot runs QEMU under a deadline: QEMU is killed by PID when the deadline
// passes, and a few seconds after an abort line or a verdict if the guest
// does not power off by itself.
func (s *suite) boot(t *testing.T, b boot) outcome {
	t.Helper()
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	var buf bytes.Buffer
	if err := b.initrd.writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	machine, cpu := "q35,accel=tcg", "max"
	cmdline := "console=ttyS0 panic=-1 quiet"
	env := s.env
	if b.machine == "microvm" {
		machine = "microvm,accel=tcg"
		cmdline += " tsc_early_khz=" + s.tscKHz + " tsc=reliable"
	}
	var firmware []string
	if b.arch == archArm64 {
		// virt, as microvm.nix runs aarch64 guests. -cpu max spends most
		// of a TCG boot emulating pointer authentication; pauth-impdef
		// keeps the feature at a third of the time (vm-testing.md step 6).
		env, machine, cpu = s.arm.env, "virt,accel=tcg", "max,pauth-impdef=on"
		cmdline = "console=ttyAMA0 panic=-1 quiet"
		if b.efi {
			// edk2 loads -kernel (an EFI stub) from fw_cfg and installs
			// the SMBIOS tables QEMU built; direct boot has none.
			firmware = []string{"-bios", env.EFI}
		}
	}
	if os.Getenv("VMCRED_VM_VERBOSE") != "" {
		cmdline = strings.Replace(cmdline, " quiet", "", 1)
	}
	if b.cmdline != "" {
		cmdline += " " + b.cmdline
	}
	mem := b.memory
	if mem == 0 {
		mem = 512
	}
	args := []string{
		"-machine", machine, "-cpu", cpu, "-smp", "1", "-m", strconv.Itoa(mem),
		"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", env.Kernel, "-initrd", initrd, "-append", cmdline,
	}
	args = append(append(args, firmware...), b.args...)
	timeout := b.timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}

	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(logDir, b.name+".log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	fmt.Fprintf(lf, "# vmcred VM test %s, %s, kernel %s\n", b.name, time.Now().Format(time.RFC3339), env.KernelPackage)
	if b.rootfs != "" {
		fmt.Fprintf(lf, "# image %s\n", b.rootfs)
	}
	fmt.Fprintf(lf, "# %s %s\n", env.QEMU, strings.Join(args, " "))

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.QEMU, args...) // on cancel: Kill of this PID only
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	o := outcome{log: logFile}
	var grace *time.Timer
	endSoon := func() { // let the guest power off by itself first
		if grace == nil {
			grace = time.AfterFunc(5*time.Second, cancel)
		}
	}
	abort := append([]string{"Kernel panic"}, b.abort...)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	verdict := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		o.console = append(o.console, line)
		fmt.Fprintf(lf, "%s\n", line)
		switch {
		case verdict:
		case strings.Contains(line, markerPass):
			o.pass, verdict = true, true
			endSoon()
		case strings.Contains(line, markerFail):
			_, o.reason, _ = strings.Cut(line, markerFail)
			o.reason, verdict = strings.TrimSpace(o.reason), true
			endSoon()
		default:
			for _, a := range abort {
				if strings.Contains(line, a) {
					o.reason, verdict = "console: "+strings.TrimSpace(line), true
					endSoon()
					break
				}
			}
		}
	}
	werr := cmd.Wait()
	o.wall = time.Since(start)
	if grace != nil {
		grace.Stop()
	}
	fmt.Fprintf(lf, "# qemu: %v after %.1f s\n%s", werr, o.wall.Seconds(), stderr.Bytes())
	switch {
	case !verdict && errors.Is(ctx.Err(), context.DeadlineExceeded):
		o.reason = fmt.Sprintf("no verdict within %s", timeout)
	case !verdict:
		o.reason = fmt.Sprintf("QEMU ended (%v) without a verdict: %s", werr, strings.TrimSpace(stderr.String()))
	}
	t.Logf("boot %s (%s %s): %.1f s wall, pass=%v; console in %s", b.name, cmp.Or(b.arch, archX86), b.machine, o.wall.Seconds(), o.pass, logFile)
	return o
}
