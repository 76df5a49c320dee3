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
)

// bootTime is what one tier-2 boot measured: systemd's own monotonic
// timestamps (the VMCRED-TIME line of boot_times in lib.sh) and, when the
// agent ran, its report's timings.
type bootTime struct {
	image     sysImage
	name      string  // case name; "" for the baseline boot without vmcred
	multiUser float64 // ms from PID 1's start to multi-user.target active
	agent     float64 // ms vmcred-guest.service took to activate; -1 without it
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
	bt := bootTime{image: img, name: name, agent: -1, total: -1, write: -1}
	if kv["multi_user_us"] <= 0 || kv["userspace_us"] <= 0 {
		t.Errorf("VMCRED-TIME without multi-user.target or PID 1 start: %v", kv)
		return
	}
	bt.multiUser = float64(kv["multi_user_us"]-kv["userspace_us"]) / 1000
	if s, a := kv["agent_start_us"], kv["agent_active_us"]; s > 0 && a >= s {
		bt.agent = float64(a-s) / 1000
	}
	if name != "" && bt.agent < 0 {
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
// boots side by side: time to multi-user.target without vmcred and with
// it, and the agent's share.
func (b *bootTimes) report(t *testing.T, images []sysImage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out strings.Builder
	out.WriteString("| systemd | boot | to multi-user.target (userspace) | vs baseline | vmcred-guest.service | share | agent total | credstore write |\n")
	out.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, img := range images {
		var base *bootTime
		var rows []bootTime
		for i := range b.all {
			switch bt := &b.all[i]; {
			case bt.image.path != img.path:
			case bt.name == "":
				base = bt
			default:
				rows = append(rows, *bt)
			}
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
		if base != nil {
			fmt.Fprintf(&out, "| %s | without vmcred | %.0f ms | | | | | |\n", img.version, base.multiUser)
		}
		for _, r := range rows {
			delta := ""
			if base != nil {
				delta = fmt.Sprintf("%+.0f ms", r.multiUser-base.multiUser)
			}
			fmt.Fprintf(&out, "| %s | %s | %.0f ms | %s | %.1f ms | %.2f %% | %.1f ms | %.1f ms |\n",
				img.version, r.name, r.multiUser, delta, r.agent, 100*r.agent/r.multiUser, r.total, r.write)
		}
	}
	t.Logf("boot times (TCG, this run):\n%s", out.String())
	if err := os.MkdirAll(logDir, 0o755); err == nil {
		os.WriteFile(filepath.Join(logDir, "boot-times.md"), []byte(out.String()), 0o644)
	}
}
