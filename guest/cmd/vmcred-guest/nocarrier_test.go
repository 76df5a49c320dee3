package main

import (
	"bytes"
	"crypto/ed25519"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/shared/logging"
	"go.uber.org/zap/zapcore"
)

// TestNoFirmwareCarrierSaysNothing (issue 18, item 9): a guest with no
// firmware carrier at all (Firecracker; cloud-hypervisor as microvm.nix
// runs it: no /sys/firmware/dmi, no qemu_fw_cfg) boots its agent, which
// waits for the host's session. It logs no warning, suggests no modprobe,
// and the status view calls it waiting, not a failed load.
func TestNoFirmwareCarrierSaysNothing(t *testing.T) {
	status := filepath.Join(t.TempDir(), "status")
	root := fstest.MapFS{"proc/sys/kernel/random/boot_id": {Data: []byte("b\n")}}
	cfg := agent.Config{Root: root, Credstore: filepath.Join(t.TempDir(), "store"), StatusDir: status,
		TrustKeys: []ed25519.PublicKey{key(1).Public().(ed25519.PublicKey)}, VM: "demo", Version: "test"}
	ag, err := agent.New(cfg, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ag.Boot()
	if err != nil || rep.Outcome != agent.OutcomeWaiting {
		t.Fatalf("boot: outcome %q, %v; want waiting, no error", rep.Outcome, err)
	}
	var buf bytes.Buffer
	logReport(logging.New(&buf, logging.Config{Level: zapcore.DebugLevel, Name: "vmcred-guest"}), rep)
	if buf.Len() > 0 {
		t.Errorf("the boot load logged %q; want nothing", buf.String())
	}
	r := run(productionDefaults(), "status", "--status-dir", status)
	out := string(r.stdout) + string(r.stderr)
	if strings.Contains(out, "ERROR") || strings.Contains(out, "modprobe") || strings.Contains(out, "is missing") || !strings.Contains(out, "waiting for the host's session") {
		t.Errorf("status: exit %d:\n%s\nwant no error, no firmware advice, and that the agent waits for the session", r.code, out)
	}
}
