package nixosmodules

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// TestRealEvalQEMUMicrovm: a declarative QEMU VM on the `microvm` machine,
// microvm.nix's default on x86_64.
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
	guestOrdering(t, "qvm", vm, "app")
}

// packLine and serveLine return the vmcred-host pack and serve lines of a
// VM's generated extraArgsScript.
func scriptLines(t *testing.T, name string, vm vmEval) (pack, serve string) {
	t.Helper()
	if vm.ExtraArgsScriptText == nil {
		t.Fatalf("vm %s: no extraArgsScript text", name)
	}
	s := *vm.ExtraArgsScriptText
	return lineWith(t, name+" args script", s, "bin/vmcred-host pack "), lineWith(t, name+" args script", s, "bin/vmcred-host serve ")
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
	wantContains(t, "pack", pack, "--hypervisor qemu-microvm", "'--from-credentials-directory=API_KEY'", "--static 'ENVIRONMENT=test'", "--channel vsock:2:8889", `--sign-key "$CREDENTIALS_DIRECTORY/vmcred.signing-key"`)
	wantContains(t, "serve", serve, "--listen vsock:any:8889", "--expect-cid 5")
	if !contains(r.KernelModules, "vhost_vsock") {
		t.Errorf("host boot.kernelModules %v: want vhost_vsock for a QEMU VM with a channel", r.KernelModules)
	}
	// The drop-in sets no PATH (path = lib.mkForce [ ], as microvm.nix).
	if d := unit(t, r.Units, "microvm@qvm.service.d/overrides.conf"); strings.Contains(d, "Environment=") {
		t.Errorf("drop-in has an Environment= line:\n%s", d)
	}
	// One line of arguments, per microvm.extraArgsScript's contract.
	wantContains(t, "args script", *r.Vms["qvm"].ExtraArgsScriptText, `echo "${args[*]}"`)
}

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
	wantContains(t, "pack", pack, "--hypervisor qemu ", "--channel vsock:2:8890")
	wantContains(t, "serve", serve, "--listen vsock:any:8890", "--expect-cid 6")
	guestOrdering(t, "q35vm", vm)
}

func TestRealEvalCloudHypervisor(t *testing.T) {
	r := mustEvalCase(t, "cloud-hypervisor")
	noFailures(t, r)
	vm := r.Vms["chvm"]
	wantDirectives(t, "drop-in", unit(t, r.Units, "microvm@chvm.service.d/overrides.conf"), "Service", "LoadCredential",
		"API_KEY:/run/secrets/chvm/api-key", "vmcred.signing-key:/run/secrets/chvm/signing.key")
	wantRunnerCallsScript(t, "chvm", vm)
	pack, serve := scriptLines(t, "chvm", vm)
	wantContains(t, "pack", pack, "--hypervisor cloud-hypervisor", "--channel vsock-stream:2:8889", "--manifest-by-channel")
	wantContains(t, "serve", serve, "--listen unix:/var/lib/microvms/chvm/notify.vsock_8889")
	// microvm.nix's own vsock socket, which ours sits next to.
	wantContains(t, "microvm-run", vm.MicrovmRun, "cid=7,socket=notify.vsock")
	wantContains(t, "agent", unit(t, vm.Units, "vmcred-guest.service"), "--channel vsock-stream:2:8889")
	guestOrdering(t, "chvm", vm, "app")
}

func TestRealEvalFirecracker(t *testing.T) {
	r := mustEvalCase(t, "firecracker")
	noFailures(t, r)
	vm := r.Vms["fcvm"]
	wantDirectives(t, "drop-in", unit(t, r.Units, "microvm@fcvm.service.d/overrides.conf"), "Service", "LoadCredential",
		"API_KEY:/run/secrets/fcvm/api-key", "vmcred.signing-key:/run/secrets/fcvm/signing.key")
	wantRunnerCallsScript(t, "fcvm", vm)
	pack, serve := scriptLines(t, "fcvm", vm)
	wantContains(t, "pack", pack, "--hypervisor firecracker", "--manifest-by-channel")
	wantContains(t, "serve", serve, "--listen unix:/var/lib/microvms/fcvm/notify.vsock_8889")
	guestOrdering(t, "fcvm", vm)
}

// TestRealEvalImperative: a VM only services.vmcred.vms names gets the
// drop-in and the installed script, and no microvm.vms entry.
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
	wantContains(t, "installed script", s, "--hypervisor qemu ", "--expect-cid 9", "--listen vsock:any:8891")
}

func TestRealEvalFlakeVM(t *testing.T) {
	r := mustEvalCase(t, "flake-vm")
	noFailures(t, r)
	vm := r.Vms["flkvm"]
	if vm.ExtraArgsScript == nil || *vm.ExtraArgsScript != "/etc/vmcred/vms/flkvm/extra-args" {
		t.Fatalf("flake VM's extraArgsScript = %v, want the installed script", vm.ExtraArgsScript)
	}
	wantRunnerCallsScript(t, "flkvm", vm)
	if _, ok := r.Etc["vmcred/vms/flkvm/extra-args"]; !ok {
		t.Errorf("the host does not install /etc/vmcred/vms/flkvm/extra-args")
	}
	// hostVM also tells the agent where the channel is (cloud-hypervisor).
	wantContains(t, "flake VM's agent", lineWith(t, "agent", unit(t, vm.Units, "vmcred-guest.service"), "ExecStart="), "--channel vsock-stream:2:8889")

	// The host serves the channel elsewhere: the flake's agent must follow.
	r2, err := evalVariant(t, "flake-vm", `services.vmcred.vms.flkvm.channel.port = 8895;`)
	if err != nil {
		t.Fatal(err)
	}
	if !anyContains(r2.FailedAssertions, `set services.vmcred-guest.channel = "vsock-stream:2:8895" there`) {
		t.Errorf("a flake VM's agent on the wrong port: failed assertions %q", r2.FailedAssertions)
	}

	r = mustEvalCase(t, "flake-vm-unwired")
	if !anyContains(r.FailedAssertions, `set services.vmcred-guest.hostVM = "flkvm"`) {
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
		{"shared signing key", "qemu-microvm", `services.vmcred.vms.other = { hypervisor = "qemu"; channel.cid = 20; channel.port = 8899; static.X = "1"; signingKeyFile = "/run/secrets/qvm/signing.key"; };`, "VMs share a signingKeyFile"},
		{"cloud-hypervisor without a signing key", "cloud-hypervisor", `services.vmcred.vms.chvm.signingKeyFile = lib.mkForce null;`, "gets the manifest by channel"},
		{"no vsock in the VM", "qemu-microvm", `microvm.vms.qvm.config.microvm.vsock.cid = lib.mkForce null;`, "set microvm.vsock.cid"},
		{"consumer that does not exist", "qemu-microvm", `microvm.vms.qvm.config.services.vmcred-guest.consumers = [ "no-such-service" ];`, "no-such-service, which this configuration does not define"},
		{"verified mode without the agent", "qemu-microvm", `microvm.vms.qvm.config.services.vmcred-guest.enable = lib.mkForce false;`, "needs the vmcred guest agent"},
		{"imperative VM without a hypervisor", "imperative", `services.vmcred.vms.impvm.hypervisor = lib.mkForce null;`, "cannot tell the hypervisor (the VM is not in microvm.vms)"},
		{"imperative QEMU VM without a CID", "imperative", `services.vmcred.vms.impvm.channel.cid = lib.mkForce null;`, "the channel server accepts only that CID"},
		{"two QEMU VMs on one vsock port", "qemu-microvm", `services.vmcred.vms.other = { hypervisor = "qemu"; channel.cid = 20; static.X = "1"; signingKeyFile = "/run/secrets/other/signing.key"; };`, "give each a different channel.port"},
		{"hypervisor contradicts microvm.nix", "qemu-microvm", `services.vmcred.vms.qvm.hypervisor = "cloud-hypervisor";`, "but the VM's microvm.nix configuration says qemu-microvm"},
		{"VM name with a space", "qemu-microvm", `services.vmcred.vms."a b" = { hypervisor = "qemu"; channel.cid = 21; channel.port = 8898; static.X = "1"; signingKeyFile = "/run/secrets/ab/signing.key"; };`, "the VM name must match"},
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
// vmcred's channel listener with it.
func TestRealEvalCloudHypervisorSocketOverride(t *testing.T) {
	r := mustVariant(t, "cloud-hypervisor", `microvm.vms.chvm.config = { microvm.vsock.cid = lib.mkForce null; microvm.cloud-hypervisor.extraArgs = [ "--vsock" "cid=7,socket=/run/chvm/vsock.sock" ]; };`)
	noFailures(t, r)
	vm := r.Vms["chvm"]
	wantContains(t, "microvm-run", vm.MicrovmRun, "cid=7,socket=/run/chvm/vsock.sock")
	_, serve := scriptLines(t, "chvm", vm)
	wantContains(t, "serve", serve, "--listen unix:/run/chvm/vsock.sock_8889")

	r = mustVariant(t, "cloud-hypervisor", `microvm.vms.chvm.config.microvm.cloud-hypervisor.extraArgs = [ "--vsock=socket=relative.vsock" ];`)
	_, serve = scriptLines(t, "chvm", r.Vms["chvm"])
	wantContains(t, "serve", serve, "--listen unix:/var/lib/microvms/chvm/relative.vsock_8889")
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
