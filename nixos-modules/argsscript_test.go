package nixosmodules

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/integration/testenv"
)

// fakeHost is a stand-in vmcred-host: it records each call's arguments
// (NUL-separated) and whether NOTIFY_SOCKET was set. `pack` prints the
// contents of $FAKE_PACK_OUTPUT; `serve` exits 3 when FAKE_SERVE=fail, and
// otherwise writes its PID and waits (bounded) to be stopped, as the real
// one receives the guest's notify messages until the VM stops.
const fakeHost = `#!/usr/bin/env bash
set -eu
printf '%s\0' "$@" > "$FAKE_LOG/$1.args"
printf '%s' "${NOTIFY_SOCKET-unset}" > "$FAKE_LOG/$1.notify"
case "$1" in
pack) cat "$FAKE_PACK_OUTPUT" ;;
serve)
  if [ "${FAKE_SERVE:-}" = fail ]; then echo "serve: bind: address in use" >&2; exit 3; fi
  echo $$ > "$FAKE_LOG/serve.pid"
  exec sleep 30
  ;;
esac
`

// fakeHypervisor records its arguments, NUL-separated.
const fakeHypervisor = `#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_LOG/hypervisor.args"
`

// The runner's two lines that matter (microvm.nix lib/runner.nix,
// microvm-run; TestRealEval* check that the rendered microvm-run has them).
const runnerLines = `set -eou pipefail
runtime_args=$("$1")
exec "$2" ${runtime_args:-}
`

// scriptEnv is one VM's generated extraArgsScript, rewritten to run here:
// its store paths and /run, /var/lib folders point at temporary ones.
type scriptEnv struct {
	dir, logDir, rd, state, creds, script, hv string
}

// newScriptEnv takes the VM's script text from the real evaluation of a
// case and rewrites it to run on this machine.
func newScriptEnv(t *testing.T, caseName, vm string) *scriptEnv {
	t.Helper()
	bash := testenv.NeedTool(t, "bash", "apt-get install -y bash")
	rmPath := testenv.NeedTool(t, "rm", "apt-get install -y coreutils")
	r := mustEvalCase(t, caseName)
	text := r.Vms[vm].ExtraArgsScriptText
	if text == nil {
		t.Fatalf("vm %s has no extraArgsScript", vm)
	}
	dir := t.TempDir()
	e := &scriptEnv{
		dir:    dir,
		logDir: filepath.Join(dir, "log"),
		rd:     filepath.Join(dir, "run-vmcred-"+vm),
		state:  filepath.Join(dir, "state"),
		creds:  filepath.Join(dir, "credentials"),
		script: filepath.Join(dir, "vmcred-args-"+vm),
		hv:     filepath.Join(dir, "hypervisor"),
	}
	pkgBin := filepath.Join(dir, "pkg", "bin")
	for _, d := range []string{pkgBin, e.logDir, filepath.Join(e.state, vm), e.rd, e.creds} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeExec(t, filepath.Join(pkgBin, "vmcred-host"), fakeHost)
	writeExec(t, e.hv, fakeHypervisor)

	s := *text
	s = regexp.MustCompile(`^#!\S+`).ReplaceAllString(s, "#!"+bash)
	s = regexp.MustCompile(`/nix/store/[^/ ]+-package\.nix/bin/vmcred-host`).ReplaceAllString(s, filepath.Join(pkgBin, "vmcred-host"))
	s = regexp.MustCompile(`/nix/store/[^/ ]+-coreutils/bin/`).ReplaceAllString(s, filepath.Dir(rmPath)+"/")
	s = strings.ReplaceAll(s, "/run/vmcred-"+vm, e.rd)
	s = strings.ReplaceAll(s, "/var/lib/microvms/", e.state+"/")
	if strings.Contains(s, "/nix/store/") {
		t.Fatalf("the script still names store paths this test does not replace:\n%s", s)
	}
	writeExec(t, e.script, s)
	t.Cleanup(func() { e.stopServe(t) })
	return e
}

// run runs the script as microvm.nix's runner does, with pack printing
// packOutput (NUL-separated).
func (e *scriptEnv) run(t *testing.T, packOutput []string, env ...string) (string, error) {
	t.Helper()
	e.stopServe(t)
	out := filepath.Join(e.dir, "pack-output")
	var b bytes.Buffer
	for _, a := range packOutput {
		b.WriteString(a)
		b.WriteByte(0)
	}
	if err := os.WriteFile(out, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"pack.args", "serve.args", "serve.notify", "serve.pid", "hypervisor.args"} {
		os.Remove(filepath.Join(e.logDir, f))
	}
	bash := testenv.NeedTool(t, "bash", "apt-get install -y bash")
	cmd := exec.Command(bash, "-c", runnerLines, "runner", e.script, e.hv)
	cmd.Dir = e.dir
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"FAKE_LOG=" + e.logDir,
		"FAKE_PACK_OUTPUT=" + out,
		"NOTIFY_SOCKET=/run/systemd/notify-for-microvm",
	}, env...)
	// A file, not a pipe: serve (in the background) keeps the script's
	// stderr open while it runs, as it does in microvm@'s journal.
	logFile, err := os.Create(filepath.Join(e.dir, "runner.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	err = cmd.Run()
	o, rerr := os.ReadFile(logFile.Name())
	if rerr != nil {
		t.Fatal(rerr)
	}
	return string(o), err
}

// stopServe ends a fake serve that a run started.
func (e *scriptEnv) stopServe(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(e.logDir, "serve.pid"))
	if err != nil {
		return
	}
	var pid int
	for _, c := range strings.TrimSpace(string(b)) {
		pid = pid*10 + int(c-'0')
	}
	if p, err := os.FindProcess(pid); err == nil && pid > 0 {
		_ = p.Kill()
	}
	os.Remove(filepath.Join(e.logDir, "serve.pid"))
}

// waitFor polls cond every 20 ms for up to 10 s (a bound on a background
// job, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestArgsScriptQEMU runs the script the real evaluation generated for a
// QEMU VM the way microvm.nix's runner runs it, with a fake vmcred-host.
func TestArgsScriptQEMU(t *testing.T) {
	e := newScriptEnv(t, "qemu-microvm", "qvm")
	oem := filepath.Join(e.rd, "oem-0")
	fw := filepath.Join(e.rd, "fw-0")
	packOut := []string{
		"-smbios", "type=11,path=" + oem,
		"-fw_cfg", "name=opt/io.vmcred.credentials/API_KEY,file=" + fw,
		"io.vmcred.credential.binary:vmcred.manifest=QUJD+/9=",
	}

	t.Run("arguments reach the hypervisor intact", func(t *testing.T) {
		for _, f := range []string{oem, fw} {
			if err := os.WriteFile(f, []byte("payload"), 0o400); err != nil {
				t.Fatal(err)
			}
		}
		if out, err := e.run(t, packOut, "CREDENTIALS_DIRECTORY="+e.creds); err != nil {
			t.Fatalf("runner: %v\n%s", err, out)
		}
		if diff := cmp.Diff(packOut, readArgs(t, e.logDir, "hypervisor")); diff != "" {
			t.Errorf("hypervisor arguments (-pack printed +hypervisor got):\n%s", diff)
		}
		wantPack := []string{
			"pack", "--vm", "qvm", "--hypervisor", "qemu-microvm",
			"--from-credentials-directory=API_KEY", "--static", "ENVIRONMENT=test",
			"--mode", "verified", "--runtime-dir", e.rd, "--overflow", "channel",
			"--sign-key", e.creds + "/vmcred.signing-key", "--print0",
		}
		if diff := cmp.Diff(wantPack, readArgs(t, e.logDir, "pack")); diff != "" {
			t.Errorf("vmcred-host pack arguments (-want +got):\n%s", diff)
		}
		if exists(filepath.Join(e.logDir, "serve.args")) {
			t.Error("serve ran without channel.notifyPort")
		}
		if exists(filepath.Join(e.rd, "hypervisor-args")) {
			t.Error("pack's NUL-separated output was left in the runtime folder")
		}

		// The payload files stay until the push has recorded the guest's
		// report …
		if !exists(oem) || !exists(fw) {
			t.Fatal("payload files were deleted before the guest reported")
		}
		// … and go once it has.
		if err := os.WriteFile(filepath.Join(e.rd, "qvm.json"), []byte(`{"vm":"qvm","state":"ready"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "payload files deleted after the guest's report", func() bool { return !exists(oem) && !exists(fw) })
	})

	for _, tc := range []struct{ name, arg string }{
		{"whitespace", "type=11,path=/run/a b"},
		{"newline", "a\nb"},
		{"glob star", "path=/run/*"},
		{"glob bracket", "oem_strings=[x]"},
		{"empty", ""},
	} {
		t.Run("refuses an argument with "+tc.name, func(t *testing.T) {
			out, err := e.run(t, []string{"-smbios", tc.arg}, "CREDENTIALS_DIRECTORY="+e.creds)
			if err == nil {
				t.Fatalf("runner started the hypervisor with %q", tc.arg)
			}
			if !strings.Contains(out, "whitespace or a glob character") {
				t.Errorf("no explanation; output:\n%s", out)
			}
			if exists(filepath.Join(e.logDir, "hypervisor.args")) {
				t.Error("the hypervisor ran")
			}
		})
	}

	t.Run("fails without CREDENTIALS_DIRECTORY", func(t *testing.T) {
		out, err := e.run(t, []string{"-x"})
		if err == nil || !strings.Contains(out, "drop-in on microvm@qvm.service") {
			t.Errorf("err = %v, output:\n%s", err, out)
		}
	})
}

// TestArgsScriptNotify: with channel.notifyPort, the script starts serve
// for the guest PID 1's own notify messages, without NOTIFY_SOCKET (it
// must not mark microvm@ ready); pack adds vmm.notify_socket. serve is
// optional: when it cannot listen, the VM starts anyway (readiness comes
// from the push alone).
func TestArgsScriptNotify(t *testing.T) {
	e := newScriptEnv(t, "qemu-q35", "q35vm")
	packOut := []string{"-smbios", "type=11,path=" + filepath.Join(e.rd, "oem-0")}
	if out, err := e.run(t, packOut, "CREDENTIALS_DIRECTORY="+e.creds); err != nil {
		t.Fatalf("runner: %v\n%s", err, out)
	}
	pack := readArgs(t, e.logDir, "pack")
	if !strings.Contains(strings.Join(pack, " "), " --notify-socket vsock-stream:2:8890 ") {
		t.Errorf("pack arguments %q lack --notify-socket vsock-stream:2:8890", pack)
	}
	waitFor(t, "serve started", func() bool { return exists(filepath.Join(e.logDir, "serve.notify")) })
	wantServe := []string{"serve", "--vm", "q35vm", "--listen", "vsock:any:8890", "--expect-cid", "6"}
	if diff := cmp.Diff(wantServe, readArgs(t, e.logDir, "serve")); diff != "" {
		t.Errorf("vmcred-host serve arguments (-want +got):\n%s", diff)
	}
	if b, _ := os.ReadFile(filepath.Join(e.logDir, "serve.notify")); string(b) != "unset" {
		t.Errorf("serve got NOTIFY_SOCKET=%q; it must not mark microvm@ ready", b)
	}

	out, err := e.run(t, packOut, "CREDENTIALS_DIRECTORY="+e.creds, "FAKE_SERVE=fail")
	if err != nil {
		t.Fatalf("a serve that cannot listen stopped the VM's start: %v\n%s", err, out)
	}
	if diff := cmp.Diff(packOut, readArgs(t, e.logDir, "hypervisor")); diff != "" {
		t.Errorf("hypervisor arguments (-pack printed +hypervisor got):\n%s", diff)
	}
}

func writeExec(t *testing.T, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

func readArgs(t *testing.T, dir, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name+".args"))
	if err != nil {
		t.Fatalf("%s was not called: %v", name, err)
	}
	s := strings.TrimSuffix(string(b), "\x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}
