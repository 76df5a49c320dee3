//go:build vmtest

package vm

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
)

// The rotation case's guest files. Consumers print "VMCRED-ROT LABEL
// pid=PID sha256=DIGEST" of the credential systemd handed them, then sleep
// as the same process (their main PID).
const (
	rotShowScript = `#!/bin/sh
# show.sh LABEL FILE [oneshot]
echo "VMCRED-ROT $1 pid=$$ sha256=$(sha256sum <"$2" | cut -d' ' -f1)"
[ "${3:-}" = oneshot ] && exit 0
exec sleep infinity
`
	// rotScript is the verdict: three rotations with rotatecheck under
	// the agent's sandbox, differing only in what is writable. The first
	// two must be refused and change nothing; the third must swap the
	// store and restart exactly the consumers of API_KEY.
	rotScript = `#!/bin/sh
. /etc/vmcred-test/case.env
fail() { echo "VMCRED-CASE FAIL $*"; exit 1; }
step() { echo "VMCRED-STEP $*"; }
pid() { systemctl show -p MainPID --value "rotate-$1.service"; }
credsum() { sha256sum <"/run/credentials/rotate-$1.service/$2" | cut -d' ' -f1; }
storesum() { sha256sum <"/run/credstore/$1" | cut -d' ' -f1; }
for u in consumer path dir bystander reload import; do eval "PID_$u=$(pid $u)"; done
step "$(systemctl --version | head -n1)"
step "rotate-import.service ImportCredential property: '$(systemctl show -p ImportCredential --value rotate-import.service 2>&1)'"
[ "$(credsum consumer API_KEY)" = "$OLD_API" ] || fail "rotate-consumer did not start with the packed API_KEY"
[ "$(storesum API_KEY)" = "$OLD_API" ] || fail "the credstore does not hold the packed API_KEY"
dir_ino=$(stat -c %i /run/credstore)
db_ino=$(stat -c %i /run/credstore/DB_PASSWORD)
ls -la --time-style=+ /run/credstore | sed 's/^/VMCRED-STEP before: /'

# rotatecheck-LABEL.service: rotatecheck under the agent's sandbox, with
# the ReadWritePaths= of LABEL (systemd-run --wait needs a dbus-daemon,
# which this guest does not have; systemctl talks to PID 1 directly).
rotate() {
	systemctl start "rotatecheck-$1.service"
	echo $?
}
unchanged() {
	[ "$(stat -c %i /run/credstore)" = "$dir_ino" ] || fail "$1: the store directory changed"
	[ "$(storesum API_KEY)" = "$OLD_API" ] || fail "$1: API_KEY changed"
	[ "$(pid consumer)" = "$PID_consumer" ] || fail "$1: rotate-consumer was restarted"
	ls -a /run | grep -q vmcred-next && fail "$1: left $(ls -a /run | grep vmcred-next) in /run"
	step "$1: refused (exit $2), store unchanged"
}
systemctl start probe-run.service
rc=$(rotate store-only)
[ "$rc" = 0 ] && fail "rotation with ReadWritePaths=/run/credstore /run/vmcred succeeded"
unchanged "ReadWritePaths=/run/credstore /run/vmcred" "$rc"
rc=$(rotate rw-run)
[ "$rc" = 0 ] || fail "rotation with ReadWritePaths=/run: exit $rc"


[ "$(stat -c %i /run/credstore)" != "$dir_ino" ] || fail "the store directory was not exchanged"
[ "$(stat -c %a /run/credstore)" = 700 ] || fail "the new store has mode $(stat -c %a /run/credstore)"
[ "$(stat -c %i /run/credstore/DB_PASSWORD)" = "$db_ino" ] || fail "unchanged DB_PASSWORD has a new inode"
[ "$(storesum API_KEY)" = "$NEW_API" ] || fail "the store does not hold the new API_KEY"
ls -a /run | grep -q vmcred-next && fail "rotation left $(ls -a /run | grep vmcred-next) in /run"
ls -la --time-style=+ /run/credstore | sed 's/^/VMCRED-STEP after: /'
[ "$(pid consumer)" != "$PID_consumer" ] || fail "rotate-consumer kept its main PID"
[ "$(pid path)" != "$PID_path" ] || fail "rotate-path kept its main PID"
[ "$(pid dir)" != "$PID_dir" ] || fail "rotate-dir kept its main PID"
[ "$(pid bystander)" = "$PID_bystander" ] || fail "rotate-bystander (DB_PASSWORD, unchanged) was restarted"
[ "$(pid import)" = "$PID_import" ] || fail "rotate-import was restarted"
[ "$(pid reload)" = "$PID_reload" ] || fail "rotate-reload was restarted instead of reloaded"
[ "$(credsum consumer API_KEY)" = "$NEW_API" ] || fail "rotate-consumer's LoadCredential=API_KEY copy is not the new value"
[ "$(credsum path api)" = "$NEW_API" ] || fail "rotate-path's LoadCredential=api:/run/credstore/API_KEY copy is not the new value"
[ "$(credsum dir all_API_KEY)" = "$NEW_API" ] || fail "rotate-dir's LoadCredential=all:/run/credstore copy is not the new value"
step "rotate-reload after reload: its JWT_SECRET copy is the $( [ "$(credsum reload JWT_SECRET)" = "$OLD_JWT" ] && echo old || echo new) value"
for u in consumer path dir; do
	i=0
	until journalctl -b -o cat -u rotate-$u.service | grep -q "sha256=$NEW_API"; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "rotate-$u.service did not print the new digest"
		sleep 0.1
	done
done
step "rotation done"
echo "VMCRED-CASE PASS"
`
)

// rotUnit is a consumer unit that starts after the agent and prints what
// it got.
func rotUnit(label, creds, file, extra string) []byte {
	return []byte(fmt.Sprintf(`[Unit]
Description=vmcred rotation test: %[1]s
Requires=vmcred-guest.service
After=vmcred-guest.service

[Service]
StandardOutput=journal+console
StandardError=journal+console
%[2]s
ExecStart=/bin/sh /etc/vmcred-test/show.sh %[1]s %[3]s
%[4]s
[Install]
WantedBy=multi-user.target
`, label, creds, file, extra))
}

const rotatecheckArgs = "--set API_KEY=/etc/vmcred-test/rotate/API_KEY:restart --set JWT_SECRET=/etc/vmcred-test/rotate/JWT_SECRET:reload"

// rotatecheckUnit runs cmd (rotatecheck) under the agent unit's sandbox
// (guest/systemd/vmcred-guest.service, less what rotatecheck does not use:
// vsock, the bound @system folder), writable where rw says.
func rotatecheckUnit(rw, cmd string) []byte {
	return []byte(`[Unit]
Description=vmcred rotation test: rotatecheck with ReadWritePaths=` + rw + `

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=` + cmd + `
ReadWritePaths=` + rw + `
UMask=0077
CapabilityBoundingSet=
NoNewPrivileges=yes
RestrictAddressFamilies=AF_UNIX
ProtectSystem=strict
ProtectHome=yes
PrivateDevices=yes
PrivateIPC=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
`)
}

// rotVerdictUnit runs rotate.sh once every consumer has started and powers
// the VM off.
const rotVerdictUnit = `[Unit]
Description=vmcred rotation test: the verdict
Requires=vmcred-guest.service
After=vmcred-guest.service rotate-consumer.service rotate-path.service rotate-dir.service rotate-bystander.service rotate-reload.service rotate-import.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh /etc/vmcred-test/rotate.sh

[Install]
WantedBy=multi-user.target
`

// TestTier2Rotate boots Debian's systemd 252 with the shipped agent unit,
// which loads the seed's credentials at boot, and consumers of API_KEY in
// each form LoadCredential= takes (by name, by path, the whole store), one
// of JWT_SECRET with an ExecReload=, one of DB_PASSWORD and one with an
// ImportCredential= line (ignored by 252). rotatecheck, under the agent's
// sandbox, then rotates API_KEY (policy restart) and JWT_SECRET (reload):
// the store swaps in one exchange, exactly the API_KEY consumers restart
// and print the new digest, the JWT_SECRET one is reloaded, and the others
// keep their main PID. A rotation first under the agent's present sandbox
// (ReadWritePaths=/run/credstore, which makes the store a mount point of
// its own) must be refused without changing anything; ReadWritePaths=/run
// works: the facts behind guest/credstore/ROTATION.md.
func TestTier2Rotate(t *testing.T) {
	s := getSuite(t)
	if os.Getenv("VMCRED_VM_TIER") == "1" {
		t.Skip("VMCRED_VM_TIER=1: tier 2 not requested")
	}
	if s.env.Rootfs == "" {
		testenv.SkipOrFail(t, "no tier-2 image: run integration/vm/setup.sh (without --tier1; debootstrap takes 1-4 min)")
	}
	s.requireCommands(t, []string{"vmcred-host pack", "vmcred-guest load"})
	agent, err := os.ReadFile(filepath.Join(repoRoot, agentUnit))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rotatecheck := filepath.Join(dir, "rotatecheck")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", rotatecheck, "./integration/cmd/rotatecheck")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build rotatecheck: %v\n%s", err, out)
	}
	t.Parallel()

	creds := seedCreds()
	byName := map[string][]byte{}
	for _, c := range creds {
		byName[c.name] = c.value
	}
	newAPI, newJWT := randomCred("API_KEY", 40).value, randomCred("JWT_SECRET", 64).value
	args := []string{"--vm", "rotate", "--hypervisor", "qemu", "--mode", "verified", "--sign-key", s.signKey,
		"--runtime-dir", filepath.Join(dir, "run")}
	qemuArgs := s.pack(t, append(args, packArgs(t, dir, creds)...)...)

	a := s.initramfs(false)
	a.file("case/case.env", 0o444, caseEnv(map[string]string{
		// vsock_loopback: the shipped unit's agent listens on vsock port 730.
		"CASE": "systemd-rotate", "MODE": "switchroot", "MODULES": "virtio_pci virtio_blk qemu_fw_cfg vsock_loopback",
	}))
	root := "case/root/"
	a.file(root+"usr/bin/vmcred-guest", 0o755, s.guestBin)
	a.file(root+"usr/bin/rotatecheck", 0o755, mustRead(t, rotatecheck))
	a.file(root+"etc/vmcred/trusted.d/host.pub", 0o444, mustRead(t, s.pubKey))
	// The VM's name, which the shipped unit's agent reads (--vm-file).
	a.file(root+"etc/vmcred/vm-name", 0o444, []byte("rotate\n"))
	enable(a, "vmcred-guest.service", agent)
	enable(a, "rotate-consumer.service", rotUnit("consumer", "LoadCredential=API_KEY", "%d/API_KEY", ""))
	enable(a, "rotate-path.service", rotUnit("path", "LoadCredential=api:/run/credstore/API_KEY", "%d/api", ""))
	enable(a, "rotate-dir.service", rotUnit("dir", "LoadCredential=all:/run/credstore", "%d/all_API_KEY", ""))
	enable(a, "rotate-bystander.service", rotUnit("bystander", "LoadCredential=DB_PASSWORD", "%d/DB_PASSWORD", ""))
	enable(a, "rotate-reload.service", rotUnit("reload", "LoadCredential=JWT_SECRET", "%d/JWT_SECRET",
		"ExecReload=/bin/sh /etc/vmcred-test/show.sh reload %d/JWT_SECRET oneshot\n"))
	enable(a, "rotate-import.service", rotUnit("import", "ImportCredential=API_*", "/dev/null", ""))
	enable(a, "vmcred-rotate-test.service", []byte(rotVerdictUnit))
	for label, rw := range map[string]string{"store-only": "/run/credstore /run/vmcred", "rw-run": "/run"} {
		a.file(root+systemdUnits+"/rotatecheck-"+label+".service", 0o644, rotatecheckUnit(rw, "/usr/bin/rotatecheck "+rotatecheckArgs))
	}
	// Is /run writable under the sandbox with ReadWritePaths=/run/credstore?
	a.file(root+systemdUnits+"/probe-run.service", 0o644, rotatecheckUnit("/run/credstore /run/vmcred",
		`/bin/sh -c 'if mkdir /run/vmcred-probe; then rmdir /run/vmcred-probe; echo "VMCRED-STEP sandbox: /run is writable"; else echo "VMCRED-STEP sandbox: /run is read-only"; fi; if grep -q " /run/credstore " /proc/self/mountinfo; then echo "VMCRED-STEP sandbox: /run/credstore is a mount point"; fi'`))
	etc := root + "etc/vmcred-test/"
	a.file(etc+"case.env", 0o444, caseEnv(map[string]string{
		"OLD_API": sha256hex(byName["API_KEY"]), "NEW_API": sha256hex(newAPI),
		"OLD_JWT": sha256hex(byName["JWT_SECRET"]), "NEW_JWT": sha256hex(newJWT),
	}))
	a.file(etc+"show.sh", 0o755, []byte(rotShowScript))
	a.file(etc+"rotate.sh", 0o755, []byte(rotScript))
	a.file(etc+"rotate/API_KEY", 0o400, newAPI)
	a.file(etc+"rotate/JWT_SECRET", 0o400, newJWT)

	drive := []string{"-drive", "file=" + s.env.Rootfs + ",if=virtio,format=raw,snapshot=on"}
	o := s.boot(t, boot{
		name: "systemd-rotate", machine: "q35", initrd: a, memory: 1024, timeout: 240 * time.Second,
		args:    append(drive, qemuArgs...),
		cmdline: "systemd.show_status=1 SYSTEMD_COLORS=0",
		abort:   []string{"Freezing execution", "Failed to start vmcred-guest", "Dependency failed for"},
	})
	if !o.pass {
		t.Fatalf("systemd-rotate: %s (console: %s)", o.reason, o.log)
	}

	// What each consumer printed: label → [pid sha256] per start.
	starts := map[string][][2]string{}
	re := regexp.MustCompile(`VMCRED-ROT (\S+) pid=(\d+) sha256=([0-9a-f]{64})`)
	for _, l := range o.console {
		if m := re.FindStringSubmatch(l); m != nil {
			starts[m[1]] = append(starts[m[1]], [2]string{m[2], m[3]})
		}
	}
	oldAPI, nAPI := sha256hex(byName["API_KEY"]), sha256hex(newAPI)
	for _, label := range []string{"consumer", "path", "dir"} {
		got := starts[label]
		if len(got) != 2 || got[0][1] != oldAPI || got[1][1] != nAPI || got[0][0] == got[1][0] {
			t.Errorf("rotate-%s printed %v; want the packed API_KEY's digest, then after a restart (another PID) the new one", label, got)
		}
	}
	if got := starts["bystander"]; len(got) != 1 || got[0][1] != sha256hex(byName["DB_PASSWORD"]) {
		t.Errorf("rotate-bystander printed %v; want one start with DB_PASSWORD's digest", got)
	}
	if got := starts["import"]; len(got) != 1 {
		t.Errorf("rotate-import printed %v; want one start (systemd 252 ignores ImportCredential=)", got)
	}
	// The reload ran ExecReload= in the old credentials: on systemd 252 a
	// reload does not refresh them.
	if got := starts["reload"]; len(got) != 2 || got[1][1] != sha256hex(byName["JWT_SECRET"]) {
		t.Errorf("rotate-reload printed %v; want its start and its reload, both with the packed JWT_SECRET", got)
	}

	// rotatecheck's own report.
	var rot struct {
		Changes  []string `json:"changes"`
		Rotation struct {
			Unchanged []string
		} `json:"rotation"`
	}
	var actions []string
	for _, l := range o.console {
		if _, js, ok := strings.Cut(l, "ROTATECHECK-ROTATION "); ok {
			if err := json.Unmarshal([]byte(js), &rot); err != nil {
				t.Errorf("rotation line %q: %v", js, err)
			}
		}
		if _, js, ok := strings.Cut(l, "ROTATECHECK-OUTCOME "); ok {
			var out struct {
				Unit, Action, Result, Error string
				Credentials                 []string
			}
			if err := json.Unmarshal([]byte(js), &out); err != nil {
				t.Errorf("outcome line %q: %v", js, err)
				continue
			}
			actions = append(actions, fmt.Sprintf("%s %s %s %s", out.Action, out.Unit, strings.Join(out.Credentials, ","), out.Result))
		}
	}
	if want := []string{"API_KEY", "JWT_SECRET"}; !slices.Equal(rot.Changes, want) {
		t.Errorf("rotation changes %q, want %q", rot.Changes, want)
	}
	if want := []string{"CLUSTER", "DB_PASSWORD", "ENVIRONMENT"}; !slices.Equal(rot.Rotation.Unchanged, want) {
		t.Errorf("rotation unchanged %q, want %q", rot.Rotation.Unchanged, want)
	}
	slices.Sort(actions)
	want := []string{
		"reload rotate-reload.service JWT_SECRET active",
		"restart rotate-consumer.service API_KEY active",
		"restart rotate-dir.service API_KEY,JWT_SECRET active",
		"restart rotate-path.service API_KEY active",
	}
	if !slices.Equal(actions, want) {
		t.Errorf("rotatecheck outcomes:\n  %s\nwant:\n  %s", strings.Join(actions, "\n  "), strings.Join(want, "\n  "))
	}
	for _, l := range o.console {
		if strings.Contains(l, "VMCRED-STEP") && (strings.Contains(l, "refused") || strings.Contains(l, "systemd 2") || strings.Contains(l, "ImportCredential") || strings.Contains(l, "rotate-reload") || strings.Contains(l, "sandbox")) ||
			strings.Contains(l, "rotatecheck[") {
			t.Log(strings.TrimSpace(l))
		}
	}
}
