package nixosmodules

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// hostEval is what tests/harness.nix prints for one host configuration,
// evaluated with nixpkgs' real module system and microvm.nix's real host
// module, guest module and runner (see harness.nix).
type hostEval struct {
	FailedAssertions []string
	Warnings         []string
	MicrovmVms       []string
	KernelModules    []string
	// Unit files under /etc/systemd/system whose name has vmcred or
	// microvm@ in it, by file name (NAME or NAME.d/overrides.conf).
	Units map[string]string
	Etc   map[string]string
	Vms   map[string]vmEval
}

// vmEval is one microvm.vms entry as microvm.nix evaluated it.
type vmEval struct {
	Hypervisor          string
	QemuMachine         string
	ExtraArgsScript     *string
	ExtraArgsScriptText *string
	// The text of the runner's bin/microvm-run (microvm.nix lib/runner.nix).
	MicrovmRun          string
	Units               map[string]string
	KernelModules       []string
	InitrdKernelModules []string
	Etc                 map[string]string
	EtcModes            map[string]string
	FailedAssertions    []string
	Warnings            []string
}

// evalCase evaluates tests/cases/NAME.nix, or an absolute case file, for
// an x86_64-linux host.
func evalCase(t *testing.T, name string) (*hostEval, error) {
	t.Helper()
	return evalCaseOn(t, name, "x86_64-linux")
}

// evalCaseOn evaluates a case for a host of the given Nix system.
func evalCaseOn(t *testing.T, name, system string, more ...string) (*hostEval, error) {
	t.Helper()
	ni := testenv.NeedTool(t, "nix-instantiate", nixHint)
	file := name
	if !filepath.IsAbs(file) {
		file = abs(t, filepath.Join("tests", "cases", name+".nix"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// --read-write-mode with a throwaway store: the stand-in pkgs write the
	// scripts' text there (builtins.toFile) so that it can be read back.
	cmd := exec.CommandContext(ctx, ni, "--read-write-mode", "--store", filepath.Join(t.TempDir(), "store"),
		"--eval", "--strict", "--json", abs(t, "tests/harness.nix"), "--arg", "case", file, "--argstr", "system", system)
	cmd.Args = append(cmd.Args, more...)
	cmd.Env = nixEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nix-instantiate harness.nix (case %s): %v\n%s", name, err, withoutTraces(stderr.String()))
	}
	var r hostEval
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("decode harness.nix output: %v\n%s", err, stdout.Bytes())
	}
	return &r, nil
}

// withoutTraces drops nixpkgs lib's deprecation traces from nix's stderr.
func withoutTraces(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "trace: evaluation warning:") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func mustEvalCase(t *testing.T, name string) *hostEval {
	t.Helper()
	r, err := evalCase(t, name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// evalVariant evaluates a case with more configuration on top: a module
// written to a temporary file that imports the case.
func evalVariant(t *testing.T, base, extra string) (*hostEval, error) {
	t.Helper()
	return evalVariantOn(t, base, extra, "x86_64-linux")
}

func evalVariantOn(t *testing.T, base, extra, system string) (*hostEval, error) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "variant.nix")
	src := fmt.Sprintf("{ lib, pkgs, vmcred, microvm, ... }: {\n  imports = [ %s ];\n%s\n}\n", abs(t, filepath.Join("tests", "cases", base+".nix")), extra)
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return evalCaseOn(t, f, system)
}

// directives returns the values of KEY= in SECTION of a unit file's text,
// in order.
func directives(text, section, key string) []string {
	var out []string
	in := false
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			in = l == "["+section+"]"
			continue
		}
		if k, v, ok := strings.Cut(l, "="); in && ok && k == key {
			out = append(out, v)
		}
	}
	return out
}

// unit returns a unit file's text, failing the test when it is missing.
func unit(t *testing.T, units map[string]string, file string) string {
	t.Helper()
	u, ok := units[file]
	if !ok {
		names := make([]string, 0, len(units))
		for n := range units {
			names = append(names, n)
		}
		t.Fatalf("no unit file %s; have %v", file, names)
	}
	return u
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// wantDirectives checks the exact values of KEY= in a unit's SECTION.
func wantDirectives(t *testing.T, what, text, section, key string, want ...string) {
	t.Helper()
	if got := directives(text, section, key); !equalStrings(got, want) {
		t.Errorf("%s [%s] %s=: got %q, want %q\n%s", what, section, key, got, want, text)
	}
}

// noMountNamespace checks that the agent's unit sets none of the options
// with which systemd builds a mount namespace (as guest/systemd's
// TestExecStart does for the shipped unit): one costs ~200 ms of every
// boot (BENCHMARKS.md), hides /run/credentials/@system from the agent in
// systemd 252, and RuntimeDirectory= would make the store a mount point
// that a rotation cannot exchange.
func noMountNamespace(t *testing.T, what, text string) {
	t.Helper()
	for _, key := range []string{
		"ProtectSystem", "ProtectHome", "PrivateDevices", "PrivateTmp", "PrivateIPC", "PrivateMounts",
		"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
		"ProtectProc", "ProcSubset", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
		"BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "RuntimeDirectory",
	} {
		if v := directives(text, "Service", key); len(v) != 0 {
			t.Errorf("%s: %s=%q gives the agent a mount namespace", what, key, v)
		}
	}
}

// lineWith returns the one line of text that contains sub.
func lineWith(t *testing.T, what, text, sub string) string {
	t.Helper()
	var hits []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			hits = append(hits, strings.TrimSpace(l))
		}
	}
	if len(hits) != 1 {
		t.Fatalf("%s: want one line with %q, got %d:\n%s", what, sub, len(hits), text)
	}
	return hits[0]
}

// noFailures fails the test on failed assertions of the host or a VM.
func noFailures(t *testing.T, r *hostEval) {
	t.Helper()
	if len(r.FailedAssertions) > 0 {
		t.Errorf("host assertions failed:\n%s", strings.Join(r.FailedAssertions, "\n"))
	}
	for n, vm := range r.Vms {
		if len(vm.FailedAssertions) > 0 {
			t.Errorf("vm %s: assertions failed:\n%s", n, strings.Join(vm.FailedAssertions, "\n"))
		}
	}
}

// wantRunnerCallsScript checks that microvm.nix's rendered microvm-run
// runs the VM's extraArgsScript and passes what it prints to the
// hypervisor, unquoted, at the end of the exec line.
func wantRunnerCallsScript(t *testing.T, name string, vm vmEval) {
	t.Helper()
	if vm.ExtraArgsScript == nil {
		t.Fatalf("vm %s: microvm.extraArgsScript is not set", name)
	}
	run := vm.MicrovmRun
	if want := "runtime_args=$(" + *vm.ExtraArgsScript + ")"; lineWith(t, name+" microvm-run", run, "runtime_args=$(") != want {
		t.Errorf("vm %s: microvm-run: want %q in\n%s", name, want, run)
	}
	if exec := lineWith(t, name+" microvm-run", run, "exec "); !strings.HasSuffix(exec, " ${runtime_args:-}") {
		t.Errorf("vm %s: microvm-run's exec line does not end with ${runtime_args:-}: %s", name, exec)
	}
}

// guestOrdering checks the guest side: vmcred-guest.service runs before
// sysinit.target after modules are loaded, and each consumer requires and
// orders after it.
func guestOrdering(t *testing.T, name string, vm vmEval, consumers ...string) {
	t.Helper()
	g := unit(t, vm.Units, "vmcred-guest.service")
	wantDirectives(t, name+" vmcred-guest.service", g, "Unit", "Before", "sysinit.target shutdown.target")
	wantDirectives(t, name+" vmcred-guest.service", g, "Unit", "After", "systemd-modules-load.service local-fs.target")
	wantDirectives(t, name+" vmcred-guest.service", g, "Unit", "DefaultDependencies", "false")
	wantDirectives(t, name+" vmcred-guest.service", g, "Install", "WantedBy", "sysinit.target")
	for _, c := range consumers {
		u := unit(t, vm.Units, c+".service")
		for _, key := range []string{"Requires", "After"} {
			var words []string
			for _, v := range directives(u, "Unit", key) {
				words = append(words, strings.Fields(v)...)
			}
			if !contains(words, "vmcred-guest.service") {
				t.Errorf("vm %s: consumer %s has %s=%q, without vmcred-guest.service\n%s", name, c, key, words, u)
			}
		}
	}
}

var storeVmcredHost = regexp.MustCompile(`/nix/store/[^/ ]+/bin/vmcred-host`)

// pushUnit returns vmcred-push@NAME.service and its ExecStart with the
// package's store path written as vmcred-host.
func pushUnit(t *testing.T, r *hostEval, name string) (text, execStart string) {
	t.Helper()
	text = unit(t, r.Units, "vmcred-push@"+name+".service")
	execStart = storeVmcredHost.ReplaceAllString(strings.TrimPrefix(lineWith(t, "push unit", text, "ExecStart="), "ExecStart="), "vmcred-host")
	return text, execStart
}

// wantPush checks the push unit of VM NAME: its exact command line, the
// LoadCredential= lines it reads its sources through, when it runs (with
// the VM, never pulling a stopped VM up, no ordering after it) and as whom.
func wantPush(t *testing.T, r *hostEval, name, wantExec string, loadCredentials ...string) {
	t.Helper()
	u, exec := pushUnit(t, r, name)
	if exec != wantExec {
		t.Errorf("vm %s: push ExecStart\n got %s\nwant %s", name, exec, wantExec)
	}
	what := "vmcred-push@" + name + ".service"
	wantDirectives(t, what, u, "Service", "LoadCredential", loadCredentials...)
	wantDirectives(t, what, u, "Service", "Type", "oneshot")
	wantDirectives(t, what, u, "Service", "User", "microvm")
	wantDirectives(t, what, u, "Service", "RestrictAddressFamilies", "AF_UNIX", "AF_VSOCK")
	// Other host users: no capability, files it writes (the report) 0600,
	// in the VM's 0700 runtime folder.
	wantDirectives(t, what, u, "Service", "CapabilityBoundingSet", "")
	wantDirectives(t, what, u, "Service", "UMask", "0077")
	wantDirectives(t, what, unit(t, r.Units, "microvm@"+name+".service.d/overrides.conf"), "Service", "RuntimeDirectoryMode", "0700")
	// Secrets reach push by LoadCredential= only, never by a path (or a
	// value) on its command line.
	if strings.Contains(exec, "/run/secrets") || strings.Contains(exec, "file:") {
		t.Errorf("vm %s: a secret's file on push's command line: %s", name, exec)
	}
	wantDirectives(t, what, u, "Install", "WantedBy", "microvm@"+name+".service")
	wantDirectives(t, what, u, "Unit", "PartOf", "microvm@"+name+".service")
	for _, key := range []string{"After", "Requires", "BindsTo", "Requisite"} {
		for _, v := range directives(u, "Unit", key) {
			if strings.Contains(v, "microvm@") {
				t.Errorf("vm %s: push unit has %s=%s: the guest's boot waits for the push (deadlock with a Type=notify microvm@), or a push would start a stopped VM", name, key, v)
			}
		}
	}
}

// wantPushPath checks vmcred-push@NAME.path: it watches exactly FILES and
// starts the push unit, while the VM runs.
func wantPushPath(t *testing.T, r *hostEval, name string, files ...string) {
	t.Helper()
	u := unit(t, r.Units, "vmcred-push@"+name+".path")
	what := "vmcred-push@" + name + ".path"
	wantDirectives(t, what, u, "Path", "PathChanged", files...)
	wantDirectives(t, what, u, "Path", "Unit", "vmcred-push@"+name+".service")
	wantDirectives(t, what, u, "Install", "WantedBy", "microvm@"+name+".service")
	wantDirectives(t, what, u, "Unit", "BindsTo", "microvm@"+name+".service")
}

// wantAgent checks the guest agent's unit in VM NAME: the long-lived
// `vmcred-guest agent` on its privileged port, with the capability to bind
// it, no mount namespace (the rotation's folder swap, the boot's time), and the VM-name file
// (0444) that the host's --vm matches.
func wantAgent(t *testing.T, name string, vm vmEval, port int) {
	t.Helper()
	g := unit(t, vm.Units, "vmcred-guest.service")
	what := name + " vmcred-guest.service"
	exec := storeVmcredGuest.ReplaceAllString(strings.TrimPrefix(lineWith(t, what, g, "ExecStart="), "ExecStart="), "vmcred-guest")
	want := fmt.Sprintf("vmcred-guest agent --vm-file /etc/vmcred/vm-name --listen vsock::%d --credstore /run/credstore --status-dir /run/vmcred --trust-key /etc/vmcred/trusted.d --system-credentials /run/credentials/@system", port)
	if exec != want {
		t.Errorf("%s: ExecStart\n got %s\nwant %s", what, exec, want)
	}
	wantDirectives(t, what, g, "Service", "CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")
	noMountNamespace(t, what, g)
	wantDirectives(t, what, g, "Service", "Restart", "on-failure")
	wantDirectives(t, what, g, "Service", "Type", "notify")
	for _, key := range []string{"RemainAfterExit", "RuntimeDirectory"} {
		if v := directives(g, "Service", key); len(v) != 0 {
			t.Errorf("%s: %s=%q (long-lived agent; the store must not be a mount point)", what, key, v)
		}
	}
	if got := vm.Etc["vmcred/vm-name"]; got != name+"\n" {
		t.Errorf("%s: /etc/vmcred/vm-name = %q, want %q (the host's push --vm)", what, got, name+"\n")
	}
	if m := vm.EtcModes["vmcred/vm-name"]; m != "0444" {
		t.Errorf("%s: /etc/vmcred/vm-name mode %q, want 0444 (a root-owned regular file)", what, m)
	}
}

// TestRealEvalQEMUMicrovm: a declarative QEMU VM on the `microvm` machine,
// microvm.nix's default on x86_64: firmware (fw_cfg) and the push by CID.
func TestRealEvalQEMUMicrovm(t *testing.T) {
	r := mustEvalCase(t, "qemu-microvm")
	noFailures(t, r)
	vm := r.Vms["qvm"]
	if vm.Hypervisor != "qemu" || vm.QemuMachine != "microvm" {
		t.Fatalf("hypervisor %s machine %s, want qemu on microvm", vm.Hypervisor, vm.QemuMachine)
	}
	drop := unit(t, r.Units, "microvm@qvm.service.d/overrides.conf")
	wantDirectives(t, "drop-in", drop, "Service", "LoadCredential",
		"API_KEY:/run/secrets/qvm/api-key", "vmcred.signing-key:/run/secrets/qvm/signing.key")
	wantRunnerCallsScript(t, "qvm", vm)
	wantPush(t, r, "qvm",
		"vmcred-host push --vm qvm --connect vsock:5:730 --sign-key %d/vmcred.signing-key --from-credentials-directory=API_KEY --static ENVIRONMENT=test --status-dir /run/vmcred-qvm --timeout 120s",
		"API_KEY:/run/secrets/qvm/api-key", "vmcred.signing-key:/run/secrets/qvm/signing.key")
	wantPushPath(t, r, "qvm", "/run/secrets/qvm/api-key")
	wantAgent(t, "qvm", vm, 730)
	guestOrdering(t, "qvm", vm, "app")
	ready := unit(t, r.Units, "vmcred-ready@qvm.service")
	wantContains(t, "ready unit", ready, "bin/vmcred-host wait --vm qvm --status-dir /run/vmcred-qvm --timeout 120s")
}

// packLine and serveLine return the vmcred-host pack and serve lines of a
// VM's generated extraArgsScript ("" when there is none).
func scriptLines(t *testing.T, name string, vm vmEval) (pack, serve string) {
	t.Helper()
	if vm.ExtraArgsScriptText == nil {
		t.Fatalf("vm %s: no extraArgsScript text", name)
	}
	s := *vm.ExtraArgsScriptText
	pack = lineWith(t, name+" args script", s, "bin/vmcred-host pack ")
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "bin/vmcred-host serve ") {
			serve = l
		}
	}
	return pack, serve
}

func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s: want %q in\n%s", what, sub, s)
		}
	}
}

func TestRealEvalQEMUMicrovmScript(t *testing.T) {
	r := mustEvalCase(t, "qemu-microvm")
	pack, serve := scriptLines(t, "qvm", r.Vms["qvm"])
	wantContains(t, "pack", pack, "--hypervisor qemu-microvm", "'--from-credentials-directory=API_KEY'", "--static 'ENVIRONMENT=test'", `--sign-key "$CREDENTIALS_DIRECTORY/vmcred.signing-key"`)
	for _, gone := range []string{"--channel", "--manifest-by-channel", "--notify-socket"} {
		if strings.Contains(pack, gone) {
			t.Errorf("pack has %s:\n%s", gone, pack)
		}
	}
	if serve != "" {
		t.Errorf("serve runs without channel.notifyPort: %s", serve)
	}
	if !contains(r.KernelModules, "vhost_vsock") {
		t.Errorf("host boot.kernelModules %v: want vhost_vsock for a QEMU VM (push dials AF_VSOCK)", r.KernelModules)
	}
	// The drop-in sets no PATH (path = lib.mkForce [ ], as microvm.nix).
	if d := unit(t, r.Units, "microvm@qvm.service.d/overrides.conf"); strings.Contains(d, "Environment=") {
		t.Errorf("drop-in has an Environment= line:\n%s", d)
	}
	// One line of arguments, per microvm.extraArgsScript's contract.
	wantContains(t, "args script", *r.Vms["qvm"].ExtraArgsScriptText, `echo "${args[*]}"`)
}

// TestRealEvalQEMUQ35: SMBIOS files, another agent port, and serve for
// the guest's own notify messages (channel.notifyPort).
func TestRealEvalQEMUQ35(t *testing.T) {
	r := mustEvalCase(t, "qemu-q35")
	noFailures(t, r)
	vm := r.Vms["q35vm"]
	if vm.QemuMachine != "q35" {
		t.Fatalf("machine %s, want q35", vm.QemuMachine)
	}
	wantDirectives(t, "drop-in", unit(t, r.Units, "microvm@q35vm.service.d/overrides.conf"), "Service", "LoadCredential",
		"DB_PASSWORD:/run/secrets/q35vm/db-password", "vmcred.signing-key:/run/secrets/q35vm/signing.key")
	wantRunnerCallsScript(t, "q35vm", vm)
	pack, serve := scriptLines(t, "q35vm", vm)
	wantContains(t, "pack", pack, "--hypervisor qemu ", "--notify-socket vsock-stream:2:8890")
	wantContains(t, "serve", serve, "serve --vm q35vm --listen vsock:any:8890 --expect-cid 6")
	wantPush(t, r, "q35vm",
		"vmcred-host push --vm q35vm --connect vsock:6:731 --sign-key %d/vmcred.signing-key --from-credentials-directory=DB_PASSWORD --status-dir /run/vmcred-q35vm --timeout 120s",
		"DB_PASSWORD:/run/secrets/q35vm/db-password", "vmcred.signing-key:/run/secrets/q35vm/signing.key")
	wantAgent(t, "q35vm", vm, 731)
	guestOrdering(t, "q35vm", vm)
}

// TestRealEvalCloudHypervisor: everything in the session, dialed through
// the VM's hybrid-vsock socket; the hypervisor gets no secret and no args
// script; a credential's policy reaches push.
func TestRealEvalCloudHypervisor(t *testing.T) {
	r := mustEvalCase(t, "cloud-hypervisor")
	noFailures(t, r)
	vm := r.Vms["chvm"]
	drop := unit(t, r.Units, "microvm@chvm.service.d/overrides.conf")
	if v := directives(drop, "Service", "LoadCredential"); len(v) != 0 {
		t.Errorf("microvm@chvm gets LoadCredential=%q; nothing goes by firmware, the hypervisor needs no secret", v)
	}
	wantDirectives(t, "drop-in", drop, "Service", "RuntimeDirectory", "vmcred-chvm")
	if vm.ExtraArgsScript != nil {
		t.Errorf("cloud-hypervisor VM has extraArgsScript %q; nothing goes by firmware", *vm.ExtraArgsScript)
	}
	wantPush(t, r, "chvm",
		"vmcred-host push --vm chvm --connect hybrid:/var/lib/microvms/chvm/notify.vsock:730 --sign-key %d/vmcred.signing-key --from-credentials-directory=API_KEY,TLS_KEY --policy TLS_KEY=reload --status-dir /run/vmcred-chvm --timeout 120s",
		"API_KEY:/run/secrets/chvm/api-key", "TLS_KEY:/run/secrets/chvm/tls.key", "vmcred.signing-key:/run/secrets/chvm/signing.key")
	wantPushPath(t, r, "chvm", "/run/secrets/chvm/api-key", "/run/secrets/chvm/tls.key")
	// microvm.nix's own vsock socket, which push dials.
	wantContains(t, "microvm-run", vm.MicrovmRun, "cid=7,socket=notify.vsock")
	wantAgent(t, "chvm", vm, 730)
	guestOrdering(t, "chvm", vm, "app")
}

func TestRealEvalFirecracker(t *testing.T) {
	r := mustEvalCase(t, "firecracker")
	noFailures(t, r)
	vm := r.Vms["fcvm"]
	if vm.ExtraArgsScript != nil {
		t.Errorf("Firecracker VM has extraArgsScript %q", *vm.ExtraArgsScript)
	}
	wantPush(t, r, "fcvm",
		"vmcred-host push --vm fcvm --connect hybrid:/var/lib/microvms/fcvm/notify.vsock:730 --sign-key %d/vmcred.signing-key --from-credentials-directory=API_KEY --status-dir /run/vmcred-fcvm --timeout 120s",
		"API_KEY:/run/secrets/fcvm/api-key", "vmcred.signing-key:/run/secrets/fcvm/signing.key")
	wantPushPath(t, r, "fcvm", "/run/secrets/fcvm/api-key")
	wantAgent(t, "fcvm", vm, 730)
	guestOrdering(t, "fcvm", vm)
}

// TestRealEvalPushOptions: pushOnChange off, waitReady as the push's
// timeout, a static string that needs quoting, specifiers escaped.
func TestRealEvalPushOptions(t *testing.T) {
	r := mustVariant(t, "cloud-hypervisor", `services.vmcred.vms.chvm = { pushOnChange = false; waitReady = 300; static.NOTE = "50% of \"all\" $HOME"; credentials.API_KEY.file = lib.mkForce "/run/secrets/chvm/api%key"; };`)
	noFailures(t, r)
	if _, ok := r.Units["vmcred-push@chvm.path"]; ok {
		t.Errorf("pushOnChange = false still makes vmcred-push@chvm.path")
	}
	_, exec := pushUnit(t, r, "chvm")
	wantContains(t, "push", exec, `--static "NOTE=50%% of \"all\" $$HOME"`, "--timeout 300s")
	u, _ := pushUnit(t, r, "chvm")
	wantDirectives(t, "push", u, "Service", "TimeoutStartSec", "330s")
	wantDirectives(t, "push", u, "Service", "LoadCredential", "API_KEY:/run/secrets/chvm/api%%key", "TLS_KEY:/run/secrets/chvm/tls.key", "vmcred.signing-key:/run/secrets/chvm/signing.key")
	wantContains(t, "ready", unit(t, r.Units, "vmcred-ready@chvm.service"), "--timeout 300s")

	r = mustVariant(t, "cloud-hypervisor", `services.vmcred.vms.chvm.credentials.API_KEY.file = lib.mkForce "/run/secrets/chvm/api%key";`)
	wantPushPath(t, r, "chvm", "/run/secrets/chvm/api%%key", "/run/secrets/chvm/tls.key")
}

// TestRealEvalImperative: a VM only services.vmcred.vms names gets the
// drop-in, the installed script and the push, and no microvm.vms entry.
func TestRealEvalImperative(t *testing.T) {
	r := mustEvalCase(t, "imperative")
	noFailures(t, r)
	if len(r.MicrovmVms) != 0 {
		t.Errorf("microvm.vms = %v, want none (an imperative VM must not become declarative)", r.MicrovmVms)
	}
	drop := unit(t, r.Units, "microvm@impvm.service.d/overrides.conf")
	wantDirectives(t, "drop-in", drop, "Service", "LoadCredential",
		"API_KEY:/run/secrets/impvm/api-key", "vmcred.signing-key:/run/secrets/impvm/signing.key")
	if strings.Contains(drop, "Environment=") {
		t.Errorf("drop-in of an imperative VM has an Environment= line (path not forced empty):\n%s", drop)
	}
	s, ok := r.Etc["vmcred/vms/impvm/extra-args"]
	if !ok {
		t.Fatalf("no /etc/vmcred/vms/impvm/extra-args; etc: %v", r.Etc)
	}
	wantContains(t, "installed script", s, "--hypervisor qemu ")
	wantPush(t, r, "impvm",
		"vmcred-host push --vm impvm --connect vsock:9:732 --sign-key %d/vmcred.signing-key --from-credentials-directory=API_KEY --status-dir /run/vmcred-impvm --timeout 120s",
		"API_KEY:/run/secrets/impvm/api-key", "vmcred.signing-key:/run/secrets/impvm/signing.key")
}

// TestRealEvalFlakeVM: a cloud-hypervisor VM from a flake wires itself
// with hostVM (its agent's VM name); the host checks name and port.
func TestRealEvalFlakeVM(t *testing.T) {
	r := mustEvalCase(t, "flake-vm")
	noFailures(t, r)
	vm := r.Vms["flkvm"]
	if vm.ExtraArgsScript != nil {
		t.Errorf("cloud-hypervisor flake VM has extraArgsScript %q", *vm.ExtraArgsScript)
	}
	wantAgent(t, "flkvm", vm, 730)
	_, exec := pushUnit(t, r, "flkvm")
	wantContains(t, "push", exec, "--vm flkvm --connect hybrid:/var/lib/microvms/flkvm/notify.vsock:730 ")

	// The host dials another port: the flake's agent must follow.
	r2, err := evalVariant(t, "flake-vm", `services.vmcred.vms.flkvm.channel.port = 733;`)
	if err != nil {
		t.Fatal(err)
	}
	if !anyContains(r2.FailedAssertions, `set services.vmcred-guest.port = 733 there`) {
		t.Errorf("a flake VM's agent on the wrong port: failed assertions %q", r2.FailedAssertions)
	}

	r = mustEvalCase(t, "flake-vm-unwired")
	if !anyContains(r.FailedAssertions, `takes its VM name to be "flkvm-guest"`) || !anyContains(r.FailedAssertions, `set services.vmcred-guest.hostVM = "flkvm"`) {
		t.Errorf("an unwired flake VM: want a failed assertion naming the fix, got %q", r.FailedAssertions)
	}
}

func TestRealEvalBadInputs(t *testing.T) {
	for _, tc := range []struct {
		name, base, extra string
		want              string // in a failed assertion (host or VM)
	}{
		{"secret in the Nix store", "qemu-microvm", `services.vmcred.vms.qvm.credentials.API_KEY.file = lib.mkForce "/nix/store/aaaa-api-key";`, "outside /nix/store"},
		{"reserved name", "qemu-microvm", `services.vmcred.vms.qvm.static."vmcred.manifest" = "x";`, "not start with `vmcred.`"},
		{"credential and static with one name", "qemu-microvm", `services.vmcred.vms.qvm.static.API_KEY = "x";`, "both a credential and a static string"},
		{"shared signing key", "qemu-microvm", `services.vmcred.vms.other = { hypervisor = "qemu"; channel.cid = 20; static.X = "1"; signingKeyFile = "/run/secrets/qvm/signing.key"; };`, "VMs share a signingKeyFile"},
		{"cloud-hypervisor without a signing key", "cloud-hypervisor", `services.vmcred.vms.chvm.signingKeyFile = lib.mkForce null;`, "set services.vmcred.vms.chvm.signingKeyFile"},
		{"QEMU without a signing key", "qemu-microvm", `services.vmcred.vms.qvm.signingKeyFile = lib.mkForce null;`, "set services.vmcred.vms.qvm.signingKeyFile"},
		{"Firecracker without a signing key", "firecracker", `services.vmcred.vms.fcvm.signingKeyFile = lib.mkForce null;`, "set services.vmcred.vms.fcvm.signingKeyFile"},
		{"agent port not privileged", "qemu-microvm", `services.vmcred.vms.qvm.channel.port = 1024;`, "channel.port = 1024: the guest agent's port must be privileged (1-1023"},
		{"agent port not privileged on firecracker", "firecracker", `services.vmcred.vms.fcvm.channel.port = 8889;`, "channel.port = 8889: the guest agent's port must be privileged"},
		{"agent port 0", "cloud-hypervisor", `services.vmcred.vms.chvm.channel.port = 0;`, "channel.port = 0: the guest agent's port must be privileged"},
		{"guest agent port not privileged", "qemu-microvm", `microvm.vms.qvm.config.services.vmcred-guest.port = lib.mkForce 2000;`, "services.vmcred-guest.port = 2000: the agent listens only on a privileged vsock port"},
		{"guest with another VM name", "qemu-microvm", `microvm.vms.qvm.config.services.vmcred-guest.vmName = "other";`, "vmName is \"other\", but the host signs its sessions for \"qvm\""},
		{"guest without a trusted key", "cloud-hypervisor", `microvm.vms.chvm.config.services.vmcred-guest.trustedKeys = lib.mkForce [ ];`, "trustedKeys is empty: the agent accepts only a manifest signed by a trusted key"},
		{"notify port on a hybrid VM", "cloud-hypervisor", `services.vmcred.vms.chvm.channel.notifyPort = 8889;`, "channel.notifyPort is for QEMU VMs"},
		{"no vsock in the VM", "qemu-microvm", `microvm.vms.qvm.config.microvm.vsock.cid = lib.mkForce null;`, "set microvm.vsock.cid"},
		{"consumer that does not exist", "qemu-microvm", `microvm.vms.qvm.config.services.vmcred-guest.consumers = [ "no-such-service" ];`, "no-such-service, which this configuration does not define"},
		{"no agent in the VM", "qemu-microvm", `microvm.vms.qvm.config.services.vmcred-guest.enable = lib.mkForce false;`, "the push needs the vmcred guest agent in the VM to answer"},
		{"imperative VM without a hypervisor", "imperative", `services.vmcred.vms.impvm.hypervisor = lib.mkForce null;`, "cannot tell the hypervisor (the VM is not in microvm.vms)"},
		{"imperative QEMU VM without a CID", "imperative", `services.vmcred.vms.impvm.channel.cid = lib.mkForce null;`, "push dials the guest agent at that CID"},
		{"two QEMU VMs on one notify port", "qemu-q35", `services.vmcred.vms.other = { hypervisor = "qemu"; channel.cid = 20; channel.notifyPort = 8890; static.X = "1"; signingKeyFile = "/run/secrets/other/signing.key"; };`, "give each a different channel.notifyPort"},
		{"hypervisor contradicts microvm.nix", "qemu-microvm", `services.vmcred.vms.qvm.hypervisor = "cloud-hypervisor";`, "but the VM's microvm.nix configuration says qemu-microvm"},
		{"VM name with a space", "qemu-microvm", `services.vmcred.vms."a b" = { hypervisor = "qemu"; channel.cid = 21; static.X = "1"; signingKeyFile = "/run/secrets/ab/signing.key"; };`, "the VM name must match"},
		{"credential name with a space", "qemu-microvm", `services.vmcred.vms.qvm.credentials."api key".file = "/run/k";`, "must match"},
		{"hypervisor vmcred cannot serve", "qemu-microvm", `microvm.vms.qvm.config.microvm.hypervisor = lib.mkForce "crosvm";`, "unsupported hypervisor crosvm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := evalVariant(t, tc.base, tc.extra)
			if err != nil {
				t.Fatal(err)
			}
			all := r.FailedAssertions
			for _, vm := range r.Vms {
				all = append(all, vm.FailedAssertions...)
			}
			if !anyContains(all, tc.want) {
				t.Errorf("no failed assertion with %q; failed: %q", tc.want, all)
			}
		})
	}
}

func mustVariant(t *testing.T, base, extra string) *hostEval {
	t.Helper()
	r, err := evalVariant(t, base, extra)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRealEvalAarch64Virt: on aarch64 microvm.nix's QEMU default is the
// `virt` machine with direct kernel boot, where the guest sees no SMBIOS
// table: credentials go by fw_cfg (pack's qemu-microvm target).
func TestRealEvalAarch64Virt(t *testing.T) {
	r, err := evalCaseOn(t, "qemu-microvm", "aarch64-linux")
	if err != nil {
		t.Fatal(err)
	}
	noFailures(t, r)
	vm := r.Vms["qvm"]
	if vm.QemuMachine != "virt" {
		t.Fatalf("machine %s, want microvm.nix's aarch64 default virt", vm.QemuMachine)
	}
	pack, _ := scriptLines(t, "qvm", vm)
	wantContains(t, "pack", pack, "--hypervisor qemu-microvm")
	wantRunnerCallsScript(t, "qvm", vm)
	wantContains(t, "microvm-run", vm.MicrovmRun, "qemu-system-aarch64", "-M 'virt,")
}

// TestRealEvalCloudHypervisorSocketOverride: a --vsock socket= in
// microvm.cloud-hypervisor.extraArgs moves microvm.nix's vsock socket, and
// the address push dials with it.
func TestRealEvalCloudHypervisorSocketOverride(t *testing.T) {
	r := mustVariant(t, "cloud-hypervisor", `microvm.vms.chvm.config = { microvm.vsock.cid = lib.mkForce null; microvm.cloud-hypervisor.extraArgs = [ "--vsock" "cid=7,socket=/run/chvm/vsock.sock" ]; };`)
	noFailures(t, r)
	vm := r.Vms["chvm"]
	wantContains(t, "microvm-run", vm.MicrovmRun, "cid=7,socket=/run/chvm/vsock.sock")
	_, exec := pushUnit(t, r, "chvm")
	wantContains(t, "push", exec, "--connect hybrid:/run/chvm/vsock.sock:730 ")

	r = mustVariant(t, "cloud-hypervisor", `microvm.vms.chvm.config.microvm.cloud-hypervisor.extraArgs = [ "--vsock=socket=relative.vsock" ];`)
	_, exec = pushUnit(t, r, "chvm")
	wantContains(t, "push", exec, "--connect hybrid:/var/lib/microvms/chvm/relative.vsock:730 ")
}

// TestRealEvalSecretsUnits: microvm@<name> waits for the units that deploy
// its secrets.
func TestRealEvalSecretsUnits(t *testing.T) {
	r := mustVariant(t, "qemu-microvm", `services.vmcred.vms.qvm.secretsUnits = [ "sops-install-secrets.service" ];`)
	drop := unit(t, r.Units, "microvm@qvm.service.d/overrides.conf")
	wantDirectives(t, "drop-in", drop, "Unit", "After", "sops-install-secrets.service")
	wantDirectives(t, "drop-in", drop, "Unit", "Wants", "sops-install-secrets.service")

	r = mustEvalCase(t, "qemu-microvm")
	drop = unit(t, r.Units, "microvm@qvm.service.d/overrides.conf")
	if a := directives(drop, "Unit", "After"); len(a) != 0 {
		t.Errorf("without secret units the drop-in orders After=%q", a)
	}
}

// TestRealEvalNoVhostVsockForHybrid: vhost_vsock is for QEMU only.
func TestRealEvalNoVhostVsockForHybrid(t *testing.T) {
	r := mustEvalCase(t, "cloud-hypervisor")
	if contains(r.KernelModules, "vhost_vsock") {
		t.Errorf("boot.kernelModules %v: a cloud-hypervisor-only host needs no vhost_vsock", r.KernelModules)
	}
}

// TestFlakeOutputs evaluates flake.nix's outputs with stand-in inputs (as
// tests/harness.nix does): the modules, a package per system and the
// overlay are there, and the modules are the files the harness tests.
func TestFlakeOutputs(t *testing.T) {
	expr := fmt.Sprintf(`
let
  lib = import %s;
  pkgsFor = system: import %s { inherit lib system; };
  nixpkgs = { inherit lib; legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] pkgsFor; };
  flake = (import %s).outputs { self = flake; inherit nixpkgs; };
  pkgs = pkgsFor "x86_64-linux";
in {
  nixosModules = builtins.attrNames flake.nixosModules;
  host = toString flake.nixosModules.host;
  guest = toString flake.nixosModules.guest;
  default = map toString flake.nixosModules.default.imports;
  packages = lib.mapAttrs (_: ps: lib.mapAttrs (_: p: p.name) ps) flake.packages;
  overlay = (flake.overlays.default pkgs pkgs).vmcred.name;
  clanService = toString flake.clan.modules.vmcred;
}`, abs(t, "tests/nix-compat.nix"), abs(t, "tests/standin/pkgs.nix"), abs(t, "../flake.nix"))
	out, err := nixEval(t, expr)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		NixosModules []string
		Host, Guest  string
		Default      []string
		Packages     map[string]map[string]string
		Overlay      string
		ClanService  string
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decode: %v\n%s", err, out)
	}
	if !equalStrings(r.NixosModules, []string{"default", "guest", "host"}) {
		t.Errorf("nixosModules = %q", r.NixosModules)
	}
	if r.Host != abs(t, "host.nix") || r.Guest != abs(t, "guest.nix") {
		t.Errorf("nixosModules.host = %s, .guest = %s: want this folder's host.nix and guest.nix", r.Host, r.Guest)
	}
	if !equalStrings(r.Default, []string{r.Host, r.Guest}) {
		t.Errorf("nixosModules.default imports %q, want host and guest", r.Default)
	}
	for _, sys := range []string{"x86_64-linux", "aarch64-linux"} {
		if p := r.Packages[sys]; p["default"] != "package.nix" || p["vmcred"] != "package.nix" {
			t.Errorf("packages.%s = %v, want default and vmcred from package.nix", sys, p)
		}
	}
	if r.ClanService != abs(t, "clan/default.nix") {
		t.Errorf("clan.modules.vmcred = %q, want this folder's clan/default.nix (the service TestClanSeedEvaluation evaluates)", r.ClanService)
	}
	if r.Overlay != "package.nix" {
		t.Errorf("overlays.default gives vmcred = %q, want package.nix's package", r.Overlay)
	}
}

// TestRealEvalWithoutMicrovm: the host module evaluates on a host without
// microvm.nix when it has nothing to do, and says what is missing when it
// has.
func TestRealEvalWithoutMicrovm(t *testing.T) {
	r, err := evalCaseOn(t, "no-vms", "x86_64-linux", "--arg", "withMicrovm", "false")
	if err != nil {
		t.Fatal(err)
	}
	noFailures(t, r)
	if len(r.Units) != 0 || len(r.Etc) != 0 {
		t.Errorf("no VMs, but units %v, etc %v", r.Units, r.Etc)
	}
	r, err = evalCaseOn(t, "vm-without-microvm", "x86_64-linux", "--arg", "withMicrovm", "false")
	if err != nil {
		t.Fatal(err)
	}
	if !anyContains(r.FailedAssertions, "microvm.nix's host module is not imported") {
		t.Errorf("failed assertions %q: want the missing microvm.nix host module named", r.FailedAssertions)
	}
}
