package consumers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fakeSystemd stands in for systemd's manager: units with credential
// settings, and for each a script of what a restart or reload does (the job
// result, then the states State returns, the last one repeating). It
// records every job, in order.
type fakeSystemd struct {
	units  map[string]*fakeUnit
	jobs   []string // "restart UNIT", "reload UNIT"
	listFn func() error
}

type fakeUnit struct {
	state  string
	creds  UnitCredentials
	result string   // job result; "" means "done"
	after  []string // ActiveState after the job, one per State call
	jobErr error
	calls  int
}

func (f *fakeSystemd) ActiveServices(context.Context) ([]UnitState, error) {
	if f.listFn != nil {
		if err := f.listFn(); err != nil {
			return nil, err
		}
	}
	var out []UnitState
	for name, u := range f.units {
		if u.state == "active" || u.state == "activating" || u.state == "reloading" {
			out = append(out, UnitState{Name: name, ActiveState: u.state})
		}
	}
	return out, nil
}

func (f *fakeSystemd) Credentials(_ context.Context, unit string) (UnitCredentials, error) {
	u, ok := f.units[unit]
	if !ok {
		return UnitCredentials{}, fmt.Errorf("unit %s not loaded", unit)
	}
	return u.creds, nil
}

func (f *fakeSystemd) job(kind, unit string) (string, error) {
	f.jobs = append(f.jobs, kind+" "+unit)
	u := f.units[unit]
	if u.jobErr != nil {
		return "", u.jobErr
	}
	if u.result != "" {
		return u.result, nil
	}
	return "done", nil
}

func (f *fakeSystemd) Restart(_ context.Context, unit string) (string, error) {
	return f.job("restart", unit)
}

func (f *fakeSystemd) Reload(_ context.Context, unit string) (string, error) {
	return f.job("reload", unit)
}

func (f *fakeSystemd) State(_ context.Context, unit string) (UnitState, error) {
	u := f.units[unit]
	st := "active"
	if len(u.after) > 0 {
		st = u.after[min(u.calls, len(u.after)-1)]
	}
	u.calls++
	return UnitState{Name: unit, ActiveState: st, SubState: "sub-" + st}, nil
}

// noWait is Options.Sleep for tests: no real time passes; it ends when ctx
// does.
func noWait(ctx context.Context, _ time.Duration) error { return ctx.Err() }

func load(pairs ...string) []LoadCredential {
	var out []LoadCredential
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, LoadCredential{ID: pairs[i], Path: pairs[i+1]})
	}
	return out
}

// testSystem: consumers of API_KEY in every form systemd accepts, and
// units that must never be touched.
func testSystem() *fakeSystemd {
	return &fakeSystemd{units: map[string]*fakeUnit{
		"by-name.service":         {state: "active", creds: UnitCredentials{Load: load("API_KEY", "API_KEY")}},
		"renamed.service":         {state: "active", creds: UnitCredentials{Load: load("key", "API_KEY")}},
		"by-path.service":         {state: "active", creds: UnitCredentials{Load: load("k", "/run/credstore/API_KEY")}},
		"by-path-slashes.service": {state: "active", creds: UnitCredentials{Load: load("k", "//run//credstore///API_KEY")}},
		"whole-store.service":     {state: "activating", creds: UnitCredentials{Load: load("all", "/run/credstore/")}},
		"encrypted.service":       {state: "active", creds: UnitCredentials{LoadEncrypted: load("API_KEY", "API_KEY")}},
		"import-prefix.service":   {state: "reloading", creds: UnitCredentials{Import: []string{"API_*"}, ImportSupported: true}},
		"import-star.service":     {state: "active", creds: UnitCredentials{Import: []string{"*"}, ImportSupported: true}},
		// Never touched:
		"other-cred.service":   {state: "active", creds: UnitCredentials{Load: load("DB_PASSWORD", "DB_PASSWORD")}},
		"other-path.service":   {state: "active", creds: UnitCredentials{Load: load("API_KEY", "/etc/secrets/API_KEY")}},
		"other-store.service":  {state: "active", creds: UnitCredentials{Load: load("API_KEY", "/run/credstore2/API_KEY")}},
		"id-only.service":      {state: "active", creds: UnitCredentials{Load: load("API_KEY", "OTHER")}},
		"import-other.service": {state: "active", creds: UnitCredentials{Import: []string{"API_KEY2", "DB_*"}, ImportSupported: true}},
		"inactive.service":     {state: "inactive", creds: UnitCredentials{Load: load("API_KEY", "API_KEY")}},
		"failed.service":       {state: "failed", creds: UnitCredentials{Load: load("API_KEY", "API_KEY")}},
		"vmcred-guest.service": {state: "active", creds: UnitCredentials{Import: []string{"*"}, ImportSupported: true}},
		"systemd-252.service":  {state: "active"}, // no ImportCredential property
	}}
}

func TestFind(t *testing.T) {
	sd := testSystem()
	got, err := Find(context.Background(), sd, []Change{{Name: "API_KEY"}}, Options{Exclude: []string{"vmcred-guest.service"}})
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, tg := range got {
		units = append(units, tg.Unit)
		if tg.Action != Restart || !cmp.Equal(tg.Credentials, []string{"API_KEY"}) {
			t.Errorf("%s: %+v, want restart for API_KEY", tg.Unit, tg)
		}
	}
	want := []string{"by-name.service", "by-path-slashes.service", "by-path.service", "encrypted.service",
		"import-prefix.service", "import-star.service", "renamed.service", "whole-store.service"}
	if d := cmp.Diff(want, units); d != "" {
		t.Errorf("consumers of API_KEY (-want +got):\n%s", d)
	}
	if len(sd.jobs) != 0 {
		t.Errorf("Find ran jobs: %q", sd.jobs)
	}
}

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		glob, name string
		want       bool
	}{
		{"*", "API_KEY", true},
		{"*", ".hidden", false}, // glob(3) without GLOB_PERIOD
		{".*", ".hidden", true},
		{"API_*", "API_KEY", true},
		{"API_*", "API_", true},
		{"API_*", "API", false},
		{"API_KEY", "API_KEY", true},
		{"API_KEY", "API_KEY2", false},
		{"api_*", "API_KEY", false}, // case-sensitive
		{"a.b.*", "a.b.c", true},
	}
	for _, tc := range tests {
		if got := GlobMatch(tc.glob, tc.name); got != tc.want {
			t.Errorf("GlobMatch(%q, %q) = %v, want %v", tc.glob, tc.name, got, tc.want)
		}
	}
}

func TestPolicies(t *testing.T) {
	sd := &fakeSystemd{units: map[string]*fakeUnit{
		"both.service":   {state: "active", creds: UnitCredentials{Load: load("A", "A", "B", "B")}},
		"reload.service": {state: "active", creds: UnitCredentials{Load: load("B", "B")}},
		"none.service":   {state: "active", creds: UnitCredentials{Load: load("C", "C")}},
	}}
	out, err := Apply(context.Background(), sd, []Change{{Name: "A", Policy: Restart}, {Name: "B", Policy: Reload}, {Name: "C", Policy: None}},
		Options{Sleep: noWait})
	if err != nil {
		t.Fatal(err)
	}
	want := []Outcome{
		{Unit: "both.service", Action: Restart, Credentials: []string{"A", "B"}, Result: "active"},
		{Unit: "none.service", Action: None, Credentials: []string{"C"}, Result: "skipped"},
		{Unit: "reload.service", Action: Reload, Credentials: []string{"B"}, Result: "active"},
	}
	if d := cmp.Diff(want, out, cmpopts.IgnoreFields(Outcome{}, "Err")); d != "" {
		t.Errorf("outcomes (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"restart both.service", "reload reload.service"}, sd.jobs); d != "" {
		t.Errorf("jobs (-want +got):\n%s", d)
	}
}

func TestApplyWaitsAndReportsFailures(t *testing.T) {
	sd := &fakeSystemd{units: map[string]*fakeUnit{
		"a-slow.service":      {state: "active", creds: UnitCredentials{Load: load("K", "K")}, after: []string{"activating", "activating", "active"}},
		"b-crashes.service":   {state: "active", creds: UnitCredentials{Load: load("K", "K")}, after: []string{"activating", "failed"}},
		"c-job-fails.service": {state: "active", creds: UnitCredentials{Load: load("K", "K")}, result: "failed"},
		"d-refused.service":   {state: "active", creds: UnitCredentials{Load: load("K", "K")}, jobErr: errors.New("Job type reload is not applicable")},
		"e-stops.service":     {state: "active", creds: UnitCredentials{Load: load("K", "K")}, after: []string{"inactive"}},
		"f-fine.service":      {state: "active", creds: UnitCredentials{Load: load("K", "K")}},
	}}
	out, err := Apply(context.Background(), sd, []Change{{Name: "K", Policy: Restart}}, Options{Sleep: noWait})
	if err == nil {
		t.Fatal("Apply: no error, want one naming the units that did not come back")
	}
	results := map[string]string{}
	for _, o := range out {
		results[o.Unit] = o.Result
		if o.OK() != (o.Result == "active") || (o.Err == nil) != (o.Error == "") {
			t.Errorf("%s: inconsistent outcome %+v", o.Unit, o)
		}
		if !o.OK() && !strings.Contains(o.Error, o.Unit) {
			t.Errorf("%s: error %q does not name the unit", o.Unit, o.Error)
		}
	}
	want := map[string]string{"a-slow.service": "active", "b-crashes.service": "failed", "c-job-fails.service": "failed",
		"d-refused.service": "failed", "e-stops.service": "inactive", "f-fine.service": "active"}
	if d := cmp.Diff(want, results); d != "" {
		t.Errorf("results (-want +got):\n%s", d)
	}
	for _, u := range []string{"b-crashes.service", "c-job-fails.service", "d-refused.service", "e-stops.service"} {
		if !strings.Contains(err.Error(), u) {
			t.Errorf("error %q does not name %s", err, u)
		}
	}
	for _, u := range []string{"a-slow.service", "f-fine.service"} {
		if strings.Contains(err.Error(), u) {
			t.Errorf("error %q names %s, which came back", err, u)
		}
	}
}

func TestApplyDeadline(t *testing.T) {
	sd := &fakeSystemd{units: map[string]*fakeUnit{
		"a-hangs.service": {state: "active", creds: UnitCredentials{Load: load("K", "K")}, after: []string{"activating"}},
		"b-next.service":  {state: "active", creds: UnitCredentials{Load: load("K", "K")}},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	polls := 0
	sleep := func(ctx context.Context, _ time.Duration) error {
		if polls++; polls == 3 {
			cancel() // the deadline passes while a-hangs is still activating
		}
		return ctx.Err()
	}
	out, err := Apply(ctx, sd, []Change{{Name: "K"}}, Options{Sleep: sleep})
	if err == nil {
		t.Fatal("Apply: no error at the deadline")
	}
	if len(out) != 2 || out[0].Result != "timeout" || out[1].Result != "not attempted" {
		t.Fatalf("outcomes %+v, want a-hangs timeout and b-next not attempted", out)
	}
	if !strings.Contains(out[0].Error, "still activating") {
		t.Errorf("timeout error %q does not say the unit was still activating", out[0].Error)
	}
	if d := cmp.Diff([]string{"restart a-hangs.service"}, sd.jobs); d != "" {
		t.Errorf("jobs (-want +got):\n%s", d)
	}
}

func TestApplyErrors(t *testing.T) {
	sd := testSystem()
	if _, err := Apply(context.Background(), sd, []Change{{Name: "API_KEY", Policy: "bounce"}}, Options{}); err == nil || !strings.Contains(err.Error(), `"bounce"`) {
		t.Errorf("unknown policy: err = %v", err)
	}
	sd.listFn = func() error { return errors.New("connection refused") }
	if _, err := Apply(context.Background(), sd, []Change{{Name: "API_KEY"}}, Options{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("listing failure: err = %v", err)
	}
	// Nothing changed: systemd is not even asked.
	out, err := Apply(context.Background(), sd, nil, Options{})
	if err != nil || len(out) != 0 {
		t.Errorf("no changes: %v, %v", out, err)
	}
	if len(sd.jobs) != 0 {
		t.Errorf("jobs ran: %q", sd.jobs)
	}
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"": Restart, "restart": Restart, "reload": Reload, "none": None} {
		if got, err := ParsePolicy(in); err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"Restart", "stop", " restart"} {
		if _, err := ParsePolicy(in); err == nil {
			t.Errorf("ParsePolicy(%q): no error", in)
		}
	}
}

func TestDecodeLoad(t *testing.T) {
	got, err := decodeLoad([][]any{{"a", "/run/credstore/a"}, {"b", "b"}})
	if err != nil || !cmp.Equal(got, load("a", "/run/credstore/a", "b", "b")) {
		t.Errorf("decodeLoad = %v, %v", got, err)
	}
	if got, err := decodeLoad(nil); err != nil || got != nil {
		t.Errorf("decodeLoad(nil) = %v, %v", got, err)
	}
	for _, bad := range []any{"x", [][]any{{"a"}}, [][]any{{"a", 1}}} {
		if _, err := decodeLoad(bad); err == nil {
			t.Errorf("decodeLoad(%#v): no error", bad)
		}
	}
}
