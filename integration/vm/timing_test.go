//go:build vmtest

package vm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// tierTime logs, once every subtest of t is done, how long the tier took
// from its first boot to its last (.ci/run prints these lines; a parallel
// test's own "--- PASS (N s)" leaves out its subtests).
func tierTime(t *testing.T, tier string) {
	start := time.Now()
	t.Cleanup(func() { t.Logf("VMCRED-TIER %s took %.0f s", tier, time.Since(start).Seconds()) })
}

// timingScript is the verdict of the two timing boots of an image, one
// with vmcred (the shipped unit, the seed's credentials in verified
// mode) and one without (no agent, no credentials): the boot's times,
// and that the agent, where installed, is active.
const timingScript = `#!/bin/sh
. /etc/vmcred-test/lib.sh
boot_times
if [ "$MODE" = none ]; then
	[ -e /etc/systemd/system/vmcred-guest.service ] && fail "the boot without vmcred has vmcred-guest.service"
else
	a=$(systemctl is-active vmcred-guest.service)
	[ "$a" = active ] || fail "vmcred-guest.service is $a"
	dump status vmcred-guest status --json
	# The unit's sandbox has no mount namespace (the boot's time; see its
	# comments) and DevicePolicy=closed: a process in its cgroup cannot
	# open the root disk, which root (the agent's uid) owns and can read
	# outside it; the device filter holds whatever the capabilities.
	pid=$(systemctl show --value -p MainPID vmcred-guest.service)
	[ "$(readlink /proc/$pid/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ] ||
		fail "vmcred-guest.service has a mount namespace of its own (~200 ms of every boot)"
	cg=/sys/fs/cgroup$(cut -d: -f3 "/proc/$pid/cgroup")
	head -c 512 /dev/vda >/dev/null || fail "cannot read /dev/vda as root outside the agent's cgroup"
	r=$(sh -c "echo \$\$ >$cg/cgroup.procs || { echo 'not joined'; exit; }; head -c 512 /dev/vda >/dev/null 2>&1 && echo read || echo refused")
	[ "$r" = refused ] || fail "a root process in vmcred-guest.service's cgroup ($cg): $r /dev/vda, want refused (DevicePolicy=closed)"
	echo "VMCRED-STEP the agent's cgroup cannot open /dev/vda; no mount namespace of its own"
fi
echo "VMCRED-CASE PASS"
`

// icountArgs make the guest's clock count instructions while it runs (one
// per ns, as if on a 1 GHz CPU doing one per cycle) instead of following
// the host's: under TCG on a busy host, wall-clock boot times measure the
// host's load and TCG's translation of code it runs for the first time,
// not the guest's work. While the guest idles (waiting for the disk) its
// clock follows the host's (sleep=on; sleep=off warps it to the next timer
// and a boot then "takes" minutes). The timing boots use it, so that
// boots with and without vmcred compare even with other QEMUs alongside.
var icountArgs = []string{"-icount", "shift=0,sleep=on"}

// timingName names an image's timing boot with or without the agent.
func timingName(img sysImage, agent bool) string {
	if agent {
		return fmt.Sprintf("timing-with-vmcred-systemd%d", img.major)
	}
	return fmt.Sprintf("timing-without-vmcred-systemd%d", img.major)
}

// runTiming boots img under icount with the shipped agent unit and the
// seed's credentials (agent) or with neither, and a verdict unit that
// only waits for the boot and prints its times.
func (s *suite) runTiming(t *testing.T, img sysImage, units map[string][]byte, agent bool) outcome {
	name := timingName(img, agent)
	a := s.initramfs(false)
	a.file("case/case.env", 0o444, caseEnv(map[string]string{
		"CASE": name, "MODE": "switchroot", "MODULES": "virtio_pci virtio_blk qemu_fw_cfg vsock_loopback", // the agent listens on vsock, as in runTier2
	}))
	mode := "none"
	var firmware []string
	if agent {
		mode = "verified"
		dir := t.TempDir()
		args := []string{"--vm", name, "--hypervisor", "qemu", "--mode", mode, "--sign-key", s.signKey, "--runtime-dir", filepath.Join(dir, "run")}
		firmware = s.pack(t, append(args, packArgs(t, dir, seedCreds())...)...)
		a.file("case/root/usr/bin/vmcred-guest", 0o755, s.guestBin)
		a.file("case/root/etc/vmcred/trusted.d/host.pub", 0o444, mustRead(t, s.pubKey))
		a.file("case/root/etc/vmcred/vm-name", 0o444, []byte(name+"\n")) // as runTier2
		enable(a, "vmcred-guest.service", units[agentUnit])
	}
	etc := "case/root/etc/vmcred-test/"
	a.file(etc+"case.env", 0o444, caseEnv(map[string]string{"MODE": mode, "DEMO": "0", "CUT": ""}))
	a.file(etc+"lib.sh", 0o644, []byte(libScript))
	a.file(etc+"timing.sh", 0o755, []byte(timingScript))
	enable(a, "vmcred-test.service", verdictUnit("Wants", "timing.sh", nil))
	o := s.boot(t, boot{
		name: name, machine: "q35", initrd: a, memory: 1024, timeout: 6 * time.Minute, rootfs: img.path, // icount is slow on a loaded host
		args:    append(append([]string{"-drive", "file=" + img.path + ",if=virtio,format=raw,snapshot=on"}, icountArgs...), firmware...),
		cmdline: "systemd.show_status=1 SYSTEMD_COLORS=0",
		abort:   []string{"Freezing execution", "Failed to start vmcred-guest"},
	})
	if !o.pass {
		t.Fatalf("%s: %s (console: %s)", name, o.reason, o.log)
	}
	return o
}

// bootTime is what one tier-2 boot measured: systemd's own monotonic
// timestamps (the VMCRED-TIME line of boot_times in lib.sh) and, when the
// agent ran, its report's timings.
type bootTime struct {
	image     sysImage
	name      string  // case name
	icount    bool    // a timing boot: guest time counts instructions
	multiUser float64 // ms from PID 1's start to multi-user.target active
	agent     float64 // ms vmcred-guest.service took to activate (start to READY=1); -1 without it
	// The agent's own timings_ms (status --json): total and the credstore
	// write; -1 when the boot printed no status dump.
	total, write float64
}

// bootTimes collects the boots of one TestTier2 run; safe for parallel
// subtests.
type bootTimes struct {
	mu  sync.Mutex
	all []bootTime
}

// parseTimeLine reads "VMCRED-TIME key=value ..." into microseconds.
func parseTimeLine(o outcome) (map[string]int64, bool) {
	for _, l := range o.console {
		_, rest, ok := strings.Cut(l, "VMCRED-TIME ")
		if !ok {
			continue
		}
		kv := map[string]int64{}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				n = -1 // an empty property: the unit does not exist
			}
			kv[k] = n
		}
		return kv, true
	}
	return nil, false
}

// add records a boot's times, if it printed them (a boot whose load must
// fail does not), and logs them.
func (b *bootTimes) add(t *testing.T, img sysImage, name string, o outcome) {
	t.Helper()
	kv, ok := parseTimeLine(o)
	if !ok {
		return
	}
	bt := bootTime{image: img, name: name, agent: -1, total: -1, write: -1, icount: strings.HasPrefix(name, "timing-")}
	if kv["multi_user_us"] <= 0 || kv["userspace_us"] <= 0 {
		t.Errorf("VMCRED-TIME without multi-user.target or PID 1 start: %v", kv)
		return
	}
	bt.multiUser = float64(kv["multi_user_us"]-kv["userspace_us"]) / 1000
	if s, a := kv["agent_start_us"], kv["agent_active_us"]; s > 0 && a >= s {
		bt.agent = float64(a-s) / 1000
	}
	if name != timingName(img, false) && bt.agent < 0 {
		t.Errorf("vmcred-guest.service has no activation timestamps: %v", kv)
	}
	var st struct {
		Report *struct {
			Timings struct {
				Write float64 `json:"write"`
				Total float64 `json:"total"`
			} `json:"timings_ms"`
		} `json:"report"`
	}
	if doc, _, ok := o.jsonDump("status"); ok && json.Unmarshal(doc, &st) == nil && st.Report != nil {
		bt.total, bt.write = st.Report.Timings.Total, st.Report.Timings.Write
	}
	t.Logf("systemd %d: multi-user.target after %.0f ms of userspace; vmcred-guest.service %.1f ms (%.2f %%); agent total %.1f ms, credstore write %.1f ms",
		img.major, bt.multiUser, bt.agent, 100*bt.agent/bt.multiUser, bt.total, bt.write)
	b.mu.Lock()
	b.all = append(b.all, bt)
	b.mu.Unlock()
}

// report logs, and writes to integration/logs/boot-times.md, each image's
// boots: first the two timing boots side by side (icount: guest time),
// then the other cases (wall clock, run in parallel: indicative only).
func (b *bootTimes) report(t *testing.T, images []sysImage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out strings.Builder
	out.WriteString("| systemd | boot | clock | to multi-user.target (userspace) | vmcred-guest.service | share | agent total | credstore write |\n")
	out.WriteString("|---|---|---|---|---|---|---|---|\n")
	ms := func(v float64) string {
		if v < 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f ms", v)
	}
	for _, img := range images {
		var rows []bootTime
		var without, with *bootTime
		for i := range b.all {
			bt := &b.all[i]
			if bt.image.path != img.path {
				continue
			}
			rows = append(rows, *bt)
			switch bt.name {
			case timingName(img, false):
				without = bt
			case timingName(img, true):
				with = bt
			}
		}
		sort.Slice(rows, func(i, j int) bool {
			if rows[i].icount != rows[j].icount {
				return rows[i].icount
			}
			return rows[i].name > rows[j].name // without before with
		})
		for _, r := range rows {
			clock, share, unit := "wall (parallel)", "-", "-"
			if r.icount {
				clock = "icount"
			}
			if r.agent >= 0 {
				share = fmt.Sprintf("%.2f %%", 100*r.agent/r.multiUser)
				unit = fmt.Sprintf("%.1f ms", r.agent)
			}
			fmt.Fprintf(&out, "| %s | %s | %s | %.0f ms | %s | %s | %s | %s |\n",
				img.version, r.name, clock, r.multiUser, unit, share, ms(r.total), ms(r.write))
		}
		if without != nil && with != nil {
			fmt.Fprintf(&out, "| %s | with − without | icount | %+.0f ms (%+.2f %%) | | | | |\n",
				img.version, with.multiUser-without.multiUser, 100*(with.multiUser-without.multiUser)/without.multiUser)
		}
	}
	t.Logf("boot times (this run):\n%s", out.String())
	if err := os.MkdirAll(logDir, 0o755); err == nil {
		os.WriteFile(filepath.Join(logDir, "boot-times.md"), []byte(out.String()), 0o644)
	}
}
