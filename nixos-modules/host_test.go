package nixosmodules

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/integration/testenv"
)

const varsDir = "/run/secrets/vars/per-machine/britton-desktop"

// hostCase is one host configuration: the VMs for services.vmcred.vms and
// what microvm.nix knows about them.
type hostCase struct {
	vms       map[string]map[string]any // services.vmcred.vms
	guests    map[string]map[string]any // each VM's microvm.nix settings (microvm.*)
	agent     map[string]bool           // each VM: runs the guest agent (default true)
	noMicrovm bool                      // microvm.nix not imported
	stateDir  string
	pkg       string
}

func (c hostCase) args() evalArgs {
	a := evalArgs{
		Module:  "host.nix",
		Config:  map[string]any{"services": map[string]any{"vmcred": map[string]any{"vms": c.vms}}},
		Package: c.pkg,
	}
	if c.noMicrovm {
		return a
	}
	stateDir := c.stateDir
	if stateDir == "" {
		stateDir = "/var/lib/microvms"
	}
	vms := map[string]any{}
	guests := map[string]any{}
	for name, mv := range c.guests {
		vms[name] = map[string]any{
			"flake": nil, "evaluatedConfig": nil,
			"config": map[string]any{"config": map[string]any{"microvm": mv}},
		}
		agent, ok := c.agent[name]
		if !ok {
			agent = true
		}
		guests[name] = map[string]any{
			"config": map[string]any{
				"microvm":  mv,
				"services": map[string]any{"vmcred-guest": map[string]any{"enable": agent}},
			},
			"options": map[string]any{"services": map[string]any{"vmcred-guest": map[string]any{}}},
		}
	}
	a.ForeignConfig = map[string]any{"microvm": map[string]any{"stateDir": stateDir, "vms": vms}}
	a.ForeignOptions = map[string]any{"microvm": map[string]any{"vms": map[string]any{}}}
	a.Guests = guests
	return a
}

// testVM is the seed's test-vm: three clan secrets, two static strings,
// cloud-hypervisor with vsock CID 3.
func testVM() hostCase {
	return hostCase{
		vms: map[string]map[string]any{"test-vm": {
			"credentials": map[string]any{
				"API_KEY":     map[string]any{"file": varsDir + "/test-vm-secrets/api-key"},
				"DB_PASSWORD": map[string]any{"file": varsDir + "/test-vm-secrets/db-password"},
				"JWT_SECRET":  map[string]any{"file": varsDir + "/test-vm-secrets/jwt-secret"},
			},
			"static":         map[string]any{"ENVIRONMENT": "test", "CLUSTER": "britton-desktop"},
			"signingKeyFile": varsDir + "/vmcred-signing/signing.key",
		}},
		guests: map[string]map[string]any{"test-vm": {
			"hypervisor": "cloud-hypervisor",
			"vsock":      map[string]any{"cid": 3},
		}},
	}
}

func TestHostModule(t *testing.T) {
	r := mustEval(t, testVM().args())
	if msgs := failed(r.Assertions); len(msgs) > 0 {
		t.Fatalf("assertions fail: %q", msgs)
	}

	dropIn := r.Config.Systemd.Services["microvm@test-vm"]
	if dropIn.OverrideStrategy != "asDropin" {
		t.Errorf("microvm@test-vm: overrideStrategy = %q, want asDropin", dropIn.OverrideStrategy)
	}
	wantSC := map[string]any{
		"LoadCredential": []any{
			"API_KEY:" + varsDir + "/test-vm-secrets/api-key",
			"DB_PASSWORD:" + varsDir + "/test-vm-secrets/db-password",
			"JWT_SECRET:" + varsDir + "/test-vm-secrets/jwt-secret",
			"vmcred.signing-key:" + varsDir + "/vmcred-signing/signing.key",
		},
		"LoadCredentialEncrypted": []any{},
		"RuntimeDirectory":        []any{"vmcred-test-vm"},
		"RuntimeDirectoryMode":    "0700",
	}
	// Exactly these: in particular no Group=, SupplementaryGroups= or
	// User= change on the hypervisor's unit.
	if diff := cmp.Diff(wantSC, dropIn.ServiceConfig); diff != "" {
		t.Errorf("microvm@test-vm drop-in serviceConfig (-want +got):\n%s", diff)
	}

	ready, ok := r.Config.Systemd.Services["vmcred-ready@test-vm"]
	if !ok {
		t.Fatal("no vmcred-ready@test-vm")
	}
	for what, list := range map[string][]string{"wantedBy": ready.WantedBy, "bindsTo": ready.BindsTo, "after": ready.After} {
		if diff := cmp.Diff([]string{"microvm@test-vm.service"}, list); diff != "" {
			t.Errorf("vmcred-ready@test-vm %s (-want +got):\n%s", what, diff)
		}
	}
	if got, want := ready.ServiceConfig["ExecStart"], "/usr/bin/vmcred-host wait --vm test-vm --status-dir /run/vmcred-test-vm --timeout 120s"; got != want {
		t.Errorf("vmcred-ready@test-vm ExecStart = %q, want %q", got, want)
	}
	if ready.ServiceConfig["Type"] != "oneshot" || ready.ServiceConfig["RemainAfterExit"] != true {
		t.Errorf("vmcred-ready@test-vm must be a oneshot that remains active: %v", ready.ServiceConfig)
	}

	g := r.Guests["test-vm"]
	if g.Microvm.ExtraArgsScript != "/nix/store/00000000000000000000000000000000-vmcred-args-test-vm" {
		t.Errorf("VM's microvm.extraArgsScript = %q", g.Microvm.ExtraArgsScript)
	}
	if diff := cmp.Diff(map[string]any{"mode": "verified", "channel": "vsock-stream:2:8889"}, g.Services.VmcredGuest); diff != "" {
		t.Errorf("what host.nix sets in the VM's services.vmcred-guest (-want +got):\n%s", diff)
	}
}

func TestHostModuleWithoutMicrovm(t *testing.T) {
	r := mustEval(t, hostCase{noMicrovm: true, vms: map[string]map[string]any{}}.args())
	if len(r.Config.Systemd.Services) != 0 || len(r.Assertions) != 0 {
		t.Errorf("with no VMs the module must define nothing; got services %v, assertions %v", r.Config.Systemd.Services, r.Assertions)
	}
	c := testVM()
	c.noMicrovm = true
	r = mustEval(t, c.args())
	if !anyContains(failed(r.Assertions), "microvm.nix's host module is not imported") {
		t.Errorf("VMs without microvm.nix: failing assertions %q", failed(r.Assertions))
	}
}

func TestHostModuleHypervisors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		microvm   map[string]any
		vm        map[string]any
		wantHV    string
		wantServe string
	}{
		{
			name:      "qemu microvm machine",
			microvm:   map[string]any{"hypervisor": "qemu", "qemu": map[string]any{"machine": "microvm"}, "vsock": map[string]any{"cid": 5}},
			wantHV:    "--hypervisor qemu-microvm",
			wantServe: "--listen vsock:2:8889 --runtime-dir /run/vmcred-vm --status-dir /run/vmcred-vm --expect-cid 5",
		},
		{
			name:      "qemu q35",
			microvm:   map[string]any{"hypervisor": "qemu", "qemu": map[string]any{"machine": "q35"}, "vsock": map[string]any{"cid": 5}},
			vm:        map[string]any{"channel": map[string]any{"port": 9000}},
			wantHV:    "--hypervisor qemu ",
			wantServe: "--listen vsock:2:9000 ",
		},
		{
			name:      "firecracker",
			microvm:   map[string]any{"hypervisor": "firecracker", "vsock": map[string]any{"cid": 4}},
			vm:        map[string]any{"signingKeyFile": "/run/secrets/vmcred-signing.key"},
			wantHV:    "--hypervisor firecracker",
			wantServe: "--listen unix:/var/lib/microvms/vm/notify.vsock_8889 --runtime-dir /run/vmcred-vm --status-dir /run/vmcred-vm)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := map[string]any{"credentials": map[string]any{"k": map[string]any{"file": "/run/secrets/k"}}}
			for k, v := range tc.vm {
				vm[k] = v
			}
			r := mustEval(t, hostCase{
				vms:    map[string]map[string]any{"vm": vm},
				guests: map[string]map[string]any{"vm": tc.microvm},
			}.args())
			if msgs := failed(r.Assertions); len(msgs) > 0 {
				t.Fatalf("assertions fail: %q", msgs)
			}
			s := r.Scripts["vm"]
			if !strings.Contains(s, tc.wantHV) || !strings.Contains(s, tc.wantServe) {
				t.Errorf("script lacks %q or %q:\n%s", tc.wantHV, tc.wantServe, s)
			}
			// Hybrid vsock (Firecracker): the manifest goes by channel.
			if bootstrap := strings.Contains(s, "'--manifest-by-channel'") || strings.Contains(s, " --manifest-by-channel"); bootstrap != strings.Contains(tc.wantServe, "unix:") {
				t.Errorf("script: --manifest-by-channel %v, want it exactly for hybrid vsock:\n%s", bootstrap, s)
			}
		})
	}
}

func TestHostModuleAssertions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(c *hostCase)
		want    string // in a failing assertion's message
		wantErr string // or in the evaluation error
	}{
		{
			name:    "relative secret path",
			change:  func(c *hostCase) { cred(c, "API_KEY")["file"] = "secrets/api-key" },
			wantErr: "is not of type",
		},
		{
			name:   "secret in the Nix store",
			change: func(c *hostCase) { cred(c, "API_KEY")["file"] = "/nix/store/aaaa-api-key" },
			want:   "outside /nix/store",
		},
		{
			name: "credential name with a space",
			change: func(c *hostCase) {
				c.vms["test-vm"]["credentials"].(map[string]any)["api key"] = map[string]any{"file": "/run/k"}
			},
			want: "must match",
		},
		{
			name: "reserved name",
			change: func(c *hostCase) {
				c.vms["test-vm"]["static"].(map[string]any)["vmcred.manifest"] = "x"
			},
			want: "not start with `vmcred.`",
		},
		{
			name: "credential and static with one name",
			change: func(c *hostCase) {
				c.vms["test-vm"]["static"].(map[string]any)["API_KEY"] = "x"
			},
			want: "both a credential and a static string",
		},
		{
			name: "cloud-hypervisor without the channel",
			change: func(c *hostCase) {
				c.vms["test-vm"]["channel"] = map[string]any{"enable": false, "overflow": "fail"}
				c.vms["test-vm"]["waitReady"] = false
			},
			want: "cloud-hypervisor needs channel.enable",
		},
		{
			name:   "cloud-hypervisor without a signing key",
			change: func(c *hostCase) { delete(c.vms["test-vm"], "signingKeyFile") },
			want:   "gets the manifest by channel (pack --manifest-by-channel",
		},
		{
			name:   "waitReady without the channel",
			change: func(c *hostCase) { c.vms["test-vm"]["channel"] = map[string]any{"enable": false, "overflow": "fail"} },
			want:   "waitReady needs channel.enable",
		},
		{
			name:   "hypervisor contradicts microvm.nix",
			change: func(c *hostCase) { c.vms["test-vm"]["hypervisor"] = "qemu" },
			want:   "but the VM's microvm.nix configuration says cloud-hypervisor",
		},
		{
			name:   "hypervisor vmcred cannot serve",
			change: func(c *hostCase) { c.guests["test-vm"]["hypervisor"] = "crosvm" },
			want:   "cannot tell the hypervisor (unsupported hypervisor crosvm)",
		},
		{
			name:   "no vsock in the VM",
			change: func(c *hostCase) { c.guests["test-vm"]["vsock"] = map[string]any{"cid": nil} },
			want:   "set microvm.vsock.cid",
		},
		{
			name:   "verified mode without the guest agent",
			change: func(c *hostCase) { c.agent = map[string]bool{"test-vm": false} },
			want:   "needs the vmcred guest agent in the VM",
		},
		{
			name: "two QEMU VMs on one vsock port",
			change: func(c *hostCase) {
				for _, n := range []string{"a", "b"} {
					c.vms[n] = map[string]any{"static": map[string]any{"X": "1"}}
					c.guests[n] = map[string]any{"hypervisor": "qemu", "vsock": map[string]any{"cid": len(n) + int(n[0])}}
				}
			},
			want: "give each a different channel.port",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testVM()
			tc.change(&c)
			r, err := evalModule(t, c.args())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want an evaluation error with %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msgs := failed(r.Assertions); !anyContains(msgs, tc.want) {
				t.Errorf("no failing assertion with %q; failing: %q", tc.want, msgs)
			}
		})
	}
}

func cred(c *hostCase, name string) map[string]any {
	return c.vms["test-vm"]["credentials"].(map[string]any)[name].(map[string]any)
}

// fakeHost is a stand-in vmcred-host: it records each call's arguments
// (NUL-separated) and whether NOTIFY_SOCKET was set, and `pack` prints the
// contents of $FAKE_PACK_OUTPUT.
const fakeHost = `#!/usr/bin/env bash
set -eu
printf '%s\0' "$@" > "$FAKE_LOG/$1.args"
printf '%s' "${NOTIFY_SOCKET-unset}" > "$FAKE_LOG/$1.notify"
if [ "$1" = pack ]; then cat "$FAKE_PACK_OUTPUT"; fi
`

// fakeHypervisor records its arguments, NUL-separated.
const fakeHypervisor = `#!/usr/bin/env bash
printf '%s\0' "$@" > "$FAKE_LOG/hypervisor.args"
`

// TestHostArgsScript runs the generated extraArgsScript the way
// microvm.nix's runner does (runtime_args=$(script); exec hypervisor
// ${runtime_args:-}), with a fake vmcred-host, and checks what pack and
// serve were given and what the hypervisor receives.
func TestHostArgsScript(t *testing.T) {
	bash := testenv.NeedTool(t, "bash", "apt-get install -y bash")
	dir := t.TempDir()
	pkg := filepath.Join(dir, "pkg")
	logDir := filepath.Join(dir, "log")
	state := filepath.Join(dir, "state")
	rd := filepath.Join(dir, "run-vmcred-test-vm")
	creds := filepath.Join(dir, "credentials")
	for _, d := range []string{filepath.Join(pkg, "bin"), logDir, filepath.Join(state, "test-vm"), rd, creds} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeExec(t, filepath.Join(pkg, "bin/vmcred-host"), fakeHost)
	hv := filepath.Join(dir, "hypervisor")
	writeExec(t, hv, fakeHypervisor)
	// A stale socket from an earlier run that serve must be able to bind.
	stale := filepath.Join(state, "test-vm/notify.vsock_8889")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	c := testVM()
	c.pkg, c.stateDir = pkg, state
	r := mustEval(t, c.args())
	// The script hard-codes the unit's RuntimeDirectory; point it here.
	script := strings.ReplaceAll(r.Scripts["test-vm"], "/run/vmcred-test-vm", rd)
	scriptFile := filepath.Join(dir, "vmcred-args-test-vm")
	writeExec(t, scriptFile, "#!"+bash+"\n"+script)

	// The runner's two lines (microvm.nix lib/runner.nix, microvm-run).
	runner := `set -eou pipefail
runtime_args=$("$1")
exec "$2" ${runtime_args:-}
`
	run := func(t *testing.T, packOutput []string, env ...string) (string, error) {
		t.Helper()
		out := filepath.Join(dir, "pack-output")
		var b bytes.Buffer
		for _, a := range packOutput {
			b.WriteString(a)
			b.WriteByte(0)
		}
		if err := os.WriteFile(out, b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"pack.args", "serve.args", "serve.notify", "hypervisor.args"} {
			os.Remove(filepath.Join(logDir, f))
		}
		cmd := exec.Command(bash, "-c", runner, "runner", scriptFile, hv)
		cmd.Dir = filepath.Join(state, "test-vm")
		cmd.Env = append([]string{
			"PATH=" + os.Getenv("PATH"),
			"FAKE_LOG=" + logDir,
			"FAKE_PACK_OUTPUT=" + out,
			"NOTIFY_SOCKET=/run/systemd/notify-for-microvm",
		}, env...)
		stderr, err := cmd.CombinedOutput()
		return string(stderr), err
	}

	t.Run("arguments reach the hypervisor intact", func(t *testing.T) {
		packOut := []string{
			"-smbios", "type=11,path=" + rd + "/oem-0",
			"-fw_cfg", "name=opt/io.vmcred.credentials/API_KEY,file=" + rd + "/fw-0",
			"io.vmcred.credential.binary:vmcred.manifest=QUJD+/9=",
		}
		if out, err := run(t, packOut, "CREDENTIALS_DIRECTORY="+creds); err != nil {
			t.Fatalf("runner: %v\n%s", err, out)
		}
		if diff := cmp.Diff(packOut, readArgs(t, logDir, "hypervisor")); diff != "" {
			t.Errorf("hypervisor arguments (-pack printed +hypervisor got):\n%s", diff)
		}
		wantPack := []string{
			"pack", "--vm", "test-vm", "--hypervisor", "cloud-hypervisor",
			"--from-credentials-directory=API_KEY,DB_PASSWORD,JWT_SECRET",
			"--static", "CLUSTER=britton-desktop", "--static", "ENVIRONMENT=test",
			"--mode", "verified", "--runtime-dir", rd, "--overflow", "channel",
			"--channel", "vsock-stream:2:8889", "--manifest-by-channel",
			"--sign-key", creds + "/vmcred.signing-key", "--print0",
		}
		if diff := cmp.Diff(wantPack, readArgs(t, logDir, "pack")); diff != "" {
			t.Errorf("vmcred-host pack arguments (-want +got):\n%s", diff)
		}
		// serve runs in the background: wait for it.
		serve := waitArgs(t, logDir, "serve")
		wantServe := []string{
			"serve", "--vm", "test-vm", "--listen", "unix:" + stale,
			"--runtime-dir", rd, "--status-dir", rd,
		}
		if diff := cmp.Diff(wantServe, serve); diff != "" {
			t.Errorf("vmcred-host serve arguments (-want +got):\n%s", diff)
		}
		if b, _ := os.ReadFile(filepath.Join(logDir, "serve.notify")); string(b) != "unset" {
			t.Errorf("serve got NOTIFY_SOCKET=%q; it must not mark microvm@ ready", b)
		}
		if _, err := os.Stat(stale); err == nil {
			t.Error("the stale channel socket was not removed before serve started")
		}
	})

	for _, tc := range []struct {
		name string
		arg  string
	}{
		{"whitespace", "type=11,path=/run/a b"},
		{"newline", "a\nb"},
		{"glob star", "path=/run/*"},
		{"glob bracket", "oem_strings=[x]"},
		{"empty", ""},
	} {
		t.Run("refuses an argument with "+tc.name, func(t *testing.T) {
			out, err := run(t, []string{"-smbios", tc.arg}, "CREDENTIALS_DIRECTORY="+creds)
			if err == nil {
				t.Fatalf("runner started the hypervisor with %q", tc.arg)
			}
			if !strings.Contains(out, "whitespace or a glob character") {
				t.Errorf("no explanation; output:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(logDir, "hypervisor.args")); err == nil {
				t.Error("the hypervisor ran")
			}
		})
	}

	t.Run("fails without CREDENTIALS_DIRECTORY", func(t *testing.T) {
		out, err := run(t, []string{"-x"})
		if err == nil || !strings.Contains(out, "drop-in on microvm@test-vm.service") {
			t.Errorf("err = %v, output:\n%s", err, out)
		}
	})
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
	return splitNUL(b)
}

func waitArgs(t *testing.T, dir, name string) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, name+".notify"))
		if err == nil && len(b) > 0 {
			return readArgs(t, dir, name)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not called within 10s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func splitNUL(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}
