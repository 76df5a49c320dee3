//go:build vmtest

package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// The push case: the shipped agent unit, turned into the long-lived agent
// form by a drop-in (as nixos-modules/guest.nix runs it), on its
// privileged vsock port 730, accepting sessions from CID 1: a "host"
// inside the guest (vmcred-host, static) dials it over vsock loopback,
// since the machine running the tests must never open AF_VSOCK.
const (
	pushVM = "rotate-push"

	// pushAgentDropIn: the agent form; ReadWritePaths=/run (reset first)
	// and no RuntimeDirectory= (under ProtectSystem=strict systemd binds
	// each runtime directory on itself, measured here: the store is then a
	// mount point and cannot be exchanged, guest/credstore/ROTATION.md; the
	// agent creates both folders 0700 itself); CAP_NET_BIND_SERVICE for
	// port 730; --peer-cid 1 for the in-guest host.
	pushAgentDropIn = `[Service]
ExecStart=
ExecStart=/usr/bin/vmcred-guest agent --vm ` + pushVM + ` --listen vsock::730 --peer-cid 1 --credstore /run/credstore --status-dir /run/vmcred --trust-key /etc/vmcred/trusted.d --system-credentials /run/vmcred-system-credentials
RemainAfterExit=no
RuntimeDirectory=
ReadWritePaths=
ReadWritePaths=/run
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
`

	// pushScript is the verdict: one rotation of API_KEY by vmcred-host
	// push, then four sessions that must change nothing: another VM's
	// name, another key, an older generation, a replayed manifest.
	pushScript = `#!/bin/sh
. /etc/vmcred-test/case.env
fail() { echo "VMCRED-CASE FAIL $*"; exit 1; }
step() { echo "VMCRED-STEP $*"; }
pid() { systemctl show -p MainPID --value "push-$1.service"; }
storesum() { sha256sum <"/run/credstore/$1" | cut -d' ' -f1; }
state() {
	echo "$(stat -c %i /run/credstore) $(stat -c %i /run/credstore/API_KEY) $(storesum API_KEY) $(pid consumer) $(pid bystander)"
}
step "$(systemctl --version | head -n1)"
step "agent: $(systemctl show -p ActiveState,SubState,MainPID vmcred-guest.service | tr '\n' ' ')"
[ "$(storesum API_KEY)" = "$OLD_API" ] || fail "the credstore does not hold the packed API_KEY"
PID_consumer=$(pid consumer); PID_bystander=$(pid bystander)
db_ino=$(stat -c %i /run/credstore/DB_PASSWORD)
push() {
	vmcred-host push --connect vsock:1:730 --status-dir /run/vmcred-host --timeout 60s "$@" $PUSH_SOURCES
}
push --vm "$VM" --sign-key /etc/vmcred-test/sign.key >/tmp/push.out 2>/tmp/push.err
rc=$?
sed 's/^/VMCRED-STEP push: /' /tmp/push.out
[ "$rc" = 0 ] || { sed 's/^/VMCRED-STEP push stderr: /' /tmp/push.err; fail "vmcred-host push: exit $rc"; }
grep -q "restart push-consumer.service (API_KEY): active" /tmp/push.out || fail "push did not report push-consumer restarted"
[ "$(storesum API_KEY)" = "$NEW_API" ] || fail "the credstore does not hold the new API_KEY"
[ "$(stat -c %i /run/credstore/DB_PASSWORD)" = "$db_ino" ] || fail "unchanged DB_PASSWORD has a new inode"
[ "$(pid consumer)" != "$PID_consumer" ] || fail "push-consumer kept its main PID"
[ "$(pid bystander)" = "$PID_bystander" ] || fail "push-bystander (DB_PASSWORD, unchanged) was restarted"
i=0
until journalctl -b -o cat -u push-consumer.service | grep -q "sha256=$NEW_API"; do
	i=$((i + 1)); [ $i -gt 100 ] && fail "push-consumer did not print the new digest"; sleep 0.1
done
step "rotation: push-consumer restarted with the new API_KEY, push-bystander kept PID $PID_bystander"
vmcred-guest status --status-dir /run/vmcred | grep -E '^(Generation|Rotation| {15})' | sed 's/^/VMCRED-STEP status: /'
vmcred-guest status --status-dir /run/vmcred | grep -q "restart push-consumer.service (API_KEY): active" || fail "vmcred-guest status does not show the rotation's unit"

# An unprivileged process reads nothing of it.
for f in /run/credstore/API_KEY /run/vmcred/status.json /run/vmcred/manifest /run/vmcred-host/pushed/$VM.json; do
	setpriv --reuid 65534 --regid 65534 --clear-groups cat "$f" >/dev/null 2>&1 && fail "uid 65534 could read $f"
done
step "uid 65534 can read none of the credstore, the status, the saved manifest, the push record"

before=$(state)
push --vm "other-$VM" --sign-key /etc/vmcred-test/sign.key >/dev/null 2>&1; rc=$?
[ "$rc" = 1 ] || fail "push for another VM: exit $rc, want 1"
[ "$(state)" = "$before" ] || fail "push for another VM changed something: $before -> $(state)"
step "push for another VM: refused, nothing changed, nothing restarted"
push --vm "$VM" --sign-key /etc/vmcred-test/other.key --state-dir /run/vmcred-host-other >/dev/null 2>&1; rc=$?
[ "$rc" = 1 ] || fail "push signed by another key: exit $rc, want 1"
[ "$(state)" = "$before" ] || fail "push signed by another key changed something"
step "push signed by another key: refused, nothing changed, nothing restarted"
r=$(vsockprobe older 1 730 /etc/vmcred-test/sign.key "$VM")
step "$r"
case "$r" in *"outcome failed"*"older than"*) ;; *) fail "older generation: '$r'" ;; esac
[ "$(state)" = "$before" ] || fail "an older generation changed something"
r=$(vsockprobe replay 1 730 /run/vmcred/manifest)
step "$r"
case "$r" in *"outcome failed"*"not signed for this session"*) ;; *) fail "replayed manifest: '$r'" ;; esac
[ "$(state)" = "$before" ] || fail "a replayed session changed something"
step "older generation and replay: refused, nothing changed, nothing restarted"

# A consumer that does not come back: push-fragile (JWT_SECRET) fails its
# restart; push exits 1 naming it, the new JWT_SECRET stays in place, and
# the API_KEY consumer is left alone.
PID_consumer=$(pid consumer)
vmcred-host push --connect vsock:1:730 --status-dir /run/vmcred-host --timeout 60s --vm "$VM" --sign-key /etc/vmcred-test/sign.key $PUSH_SOURCES2 >/tmp/push2.out 2>/tmp/push2.err
rc=$?
sed 's/^/VMCRED-STEP push 2: /' /tmp/push2.out
[ "$rc" = 1 ] || fail "push with a consumer that fails to restart: exit $rc, want 1"
grep -q "push-fragile.service" /tmp/push2.err || fail "push did not name push-fragile.service: $(cat /tmp/push2.err)"
[ "$(storesum JWT_SECRET)" = "$NEW_JWT" ] || fail "the new JWT_SECRET is not in place after the failed restart"
[ "$(pid consumer)" = "$PID_consumer" ] || fail "push-consumer (API_KEY, unchanged this time) was restarted"
vmcred-guest status --status-dir /run/vmcred | grep -q "push-fragile.service" || fail "vmcred-guest status does not name push-fragile.service"
step "consumer failure: push exit 1 naming push-fragile.service; the new JWT_SECRET in place; push-consumer left alone"
echo "VMCRED-CASE PASS"
`
)

// TestTier2Push is issue 15's "Tier 2": Debian's systemd 252 boots with
// the credentials packed in SMBIOS (verified mode) and the real agent as
// its unit on vsock port 730. push-consumer (LoadCredential=API_KEY)
// prints the SHA-256 of its copy; push-bystander uses DB_PASSWORD. The
// in-guest host pushes a new API_KEY: push exits 0 listing
// push-consumer.service restarted, which prints the new digest; the
// bystander keeps its main PID and DB_PASSWORD its inode. Then sessions
// for another VM, signed by another key, for an older generation, and a
// replayed one are refused with nothing changed and nothing restarted.
// Last, a push of a new JWT_SECRET whose consumer fails its restart exits
// 1 naming push-fragile.service, with the new value in place.
func TestTier2Push(t *testing.T) {
	s := getSuite(t)
	if os.Getenv("VMCRED_VM_TIER") == "1" {
		t.Skip("VMCRED_VM_TIER=1: tier 2 not requested")
	}
	if s.env.Rootfs == "" {
		testenv.SkipOrFail(t, "no tier-2 image: run integration/vm/setup.sh (without --tier1; debootstrap takes 1-4 min)")
	}
	s.requireCommands(t, []string{"vmcred-host pack", "vmcred-host push", "vmcred-guest agent"})
	agentFile, err := os.ReadFile(filepath.Join(repoRoot, agentUnit))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	probe := filepath.Join(dir, "vsockprobe")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", probe, "./integration/vm/vsockprobe")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build vsockprobe: %v\n%s", err, out)
	}
	other := filepath.Join(dir, "other")
	if out, err := exec.Command(s.host, "keygen", "--out", other).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	t.Parallel()

	creds := seedCreds()
	byName := map[string][]byte{}
	for _, c := range creds {
		byName[c.name] = c.value
	}
	newAPI := randomCred("API_KEY", 32).value
	qemuArgs := s.pack(t, append([]string{"--vm", pushVM, "--hypervisor", "qemu", "--mode", "verified", "--sign-key", s.signKey,
		"--runtime-dir", filepath.Join(dir, "run")}, packArgs(t, dir, creds)...)...)

	a := s.initramfs(false)
	a.file("case/case.env", 0o444, caseEnv(map[string]string{
		"CASE": "systemd-push", "MODE": "switchroot", "MODULES": "virtio_pci virtio_blk qemu_fw_cfg vsock_loopback",
	}))
	root := "case/root/"
	etc := root + "etc/vmcred-test/"
	a.file(root+"usr/bin/vmcred-guest", 0o755, s.guestBin)
	a.file(root+"usr/bin/vmcred-host", 0o755, s.hostBin)
	a.file(root+"usr/bin/vsockprobe", 0o755, mustRead(t, probe))
	a.file(root+"etc/vmcred/trusted.d/host.pub", 0o444, mustRead(t, s.pubKey))
	enable(a, "vmcred-guest.service", agentFile)
	a.file(root+systemdUnits+"/vmcred-guest.service.d/agent.conf", 0o644, []byte(pushAgentDropIn))
	enable(a, "push-consumer.service", rotUnit("consumer", "LoadCredential=API_KEY", "%d/API_KEY", ""))
	enable(a, "push-bystander.service", rotUnit("bystander", "LoadCredential=DB_PASSWORD", "%d/DB_PASSWORD", ""))
	enable(a, "push-fragile.service", []byte(`[Unit]
Description=vmcred push test: a consumer whose restart fails
Requires=vmcred-guest.service
After=vmcred-guest.service

[Service]
Type=oneshot
RemainAfterExit=yes
LoadCredential=JWT_SECRET
ExecStart=/bin/sh -c '[ ! -e /run/fragile-once ] && touch /run/fragile-once'

[Install]
WantedBy=multi-user.target
`))
	enable(a, "vmcred-push-test.service", []byte(strings.NewReplacer("rotate-consumer.service rotate-path.service rotate-dir.service rotate-bystander.service rotate-reload.service rotate-import.service",
		"push-consumer.service push-bystander.service push-fragile.service", "rotation test", "push test", "rotate.sh", "push.sh").Replace(rotVerdictUnit)))
	newJWT := randomCred("JWT_SECRET", 64).value
	sourceSet := func(set string, replace map[string][]byte) string {
		var sources []string
		for _, c := range creds {
			v := c.value
			if r, ok := replace[c.name]; ok {
				v = r
			}
			if c.static {
				sources = append(sources, "--static", c.name+"="+string(v))
				continue
			}
			a.file(etc+set+"/"+c.name, 0o400, v)
			sources = append(sources, "--cred", c.name+"=file:/etc/vmcred-test/"+set+"/"+c.name)
		}
		return strings.Join(sources, " ")
	}
	sources := sourceSet("push", map[string][]byte{"API_KEY": newAPI})
	sources2 := sourceSet("push2", map[string][]byte{"API_KEY": newAPI, "JWT_SECRET": newJWT})
	a.file(etc+"case.env", 0o444, caseEnv(map[string]string{
		"VM": pushVM, "OLD_API": sha256hex(byName["API_KEY"]), "NEW_API": sha256hex(newAPI), "NEW_JWT": sha256hex(newJWT),
		"PUSH_SOURCES": sources, "PUSH_SOURCES2": sources2,
	}))
	a.file(etc+"sign.key", 0o400, mustRead(t, s.signKey))
	a.file(etc+"other.key", 0o400, mustRead(t, other+".key"))
	a.file(etc+"show.sh", 0o755, []byte(rotShowScript))
	a.file(etc+"push.sh", 0o755, []byte(pushScript))

	drive := []string{"-drive", "file=" + s.env.Rootfs + ",if=virtio,format=raw,snapshot=on"}
	o := s.boot(t, boot{
		name: "systemd-push", machine: "q35", initrd: a, memory: 1024, timeout: 300 * time.Second,
		args:    append(drive, qemuArgs...),
		cmdline: "systemd.show_status=1 SYSTEMD_COLORS=0",
		abort:   []string{"Freezing execution", "Failed to start vmcred-guest", "Dependency failed for"},
	})
	if !o.pass {
		t.Fatalf("systemd-push: %s (console: %s)", o.reason, o.log)
	}
	starts := map[string][][2]string{}
	re := regexp.MustCompile(`VMCRED-ROT (\S+) pid=(\d+) sha256=([0-9a-f]{64})`)
	for _, l := range o.console {
		if m := re.FindStringSubmatch(l); m != nil {
			starts[m[1]] = append(starts[m[1]], [2]string{m[2], m[3]})
		}
		if strings.Contains(l, "VMCRED-STEP") {
			t.Log(strings.TrimSpace(l))
		}
	}
	if got := starts["consumer"]; len(got) != 2 || got[0][1] != sha256hex(byName["API_KEY"]) || got[1][1] != sha256hex(newAPI) || got[0][0] == got[1][0] {
		t.Errorf("push-consumer printed %v; want the packed API_KEY's digest, then after a restart (another PID) the new one", got)
	}
	if got := starts["bystander"]; len(got) != 1 {
		t.Errorf("push-bystander printed %v; want one start", got)
	}
}
