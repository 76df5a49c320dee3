package consumers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy says what to do to the running consumers of a changed credential.
// The host sets it per credential in the signed manifest.
type Policy string

// The policies.
const (
	// Restart restarts each active consumer: systemd copies credentials
	// into a unit's /run/credentials/UNIT only when it starts, so this is
	// what delivers the new value. The default.
	Restart Policy = "restart"
	// Reload reloads each active consumer (ExecReload=). It delivers the
	// new value only where the unit re-reads it: with systemd 260's
	// RefreshOnReload=credentials, or a service that reads the store
	// itself. A unit that cannot reload fails.
	Reload Policy = "reload"
	// None leaves consumers running with the value they started with.
	None Policy = "none"
)

// ParsePolicy parses a policy name; "" means Restart.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case "":
		return Restart, nil
	case Restart, Reload, None:
		return p, nil
	}
	return "", fmt.Errorf("unknown policy %q (want restart, reload or none)", s)
}

// rank orders policies: a unit that consumes several changed credentials
// gets the strongest of their policies.
func (p Policy) rank() int {
	switch p {
	case Restart:
		return 2
	case Reload:
		return 1
	}
	return 0
}

// Change is one credential a rotation added, changed or removed, and its
// policy.
type Change struct {
	Name   string
	Policy Policy
}

// UnitState is a unit's name and state, as systemd's ListUnits gives them.
type UnitState struct {
	Name        string
	ActiveState string // active, activating, reloading, deactivating, inactive, failed
	SubState    string // running, exited, auto-restart, ...
}

// LoadCredential is one LoadCredential= or LoadCredentialEncrypted= entry:
// the ID the unit sees and the path (absolute) or credential name
// (relative, searched in the credstores) it reads.
type LoadCredential struct {
	ID, Path string
}

// UnitCredentials is what a unit's settings say about credentials.
type UnitCredentials struct {
	Load          []LoadCredential
	LoadEncrypted []LoadCredential
	// Import holds the ImportCredential= globs.
	Import []string
	// ImportSupported is false when the manager has no ImportCredential
	// property (systemd before 254).
	ImportSupported bool
}

// Systemd is what Apply needs of the service manager. [DBus] is the real
// one; tests use a fake.
type Systemd interface {
	// ActiveServices lists the service units that are active,
	// activating or reloading.
	ActiveServices(ctx context.Context) ([]UnitState, error)
	// Credentials returns the unit's credential settings.
	Credentials(ctx context.Context, unit string) (UnitCredentials, error)
	// Restart and Reload queue the job (mode "replace") and return when
	// systemd reports it finished, with its result: "done", "failed",
	// "canceled", "timeout", "dependency" or "skipped".
	Restart(ctx context.Context, unit string) (string, error)
	Reload(ctx context.Context, unit string) (string, error)
	// State returns the unit's current state.
	State(ctx context.Context, unit string) (UnitState, error)
}

// Options configures Find and Apply.
type Options struct {
	// Store is the credstore the rotation replaced; "" means
	// /run/credstore. A LoadCredential= path inside it names a
	// credential; the store itself (LoadCredential=ID:/run/credstore)
	// consumes every credential.
	Store string
	// Exclude lists units never restarted or reloaded: the agent's own.
	Exclude []string
	// Poll is how often Apply checks whether a unit is back; 0 means
	// 100 ms.
	Poll time.Duration
	// Sleep waits between polls; nil means a timer that also ends when ctx
	// does. Tests inject one that does not wait.
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultStore is the credstore vmcred writes.
const DefaultStore = "/run/credstore"

// Target is a unit to act on.
type Target struct {
	Unit string
	// Action is the strongest policy of the changed credentials it uses.
	Action Policy
	// Credentials lists the changed credentials it uses, sorted.
	Credentials []string
}

// Outcome is what Apply did to one unit and how it ended. It carries unit
// and credential names only, never a value.
type Outcome struct {
	Unit        string   `json:"unit"`
	Action      Policy   `json:"action"`
	Credentials []string `json:"credentials"`
	// Result is "active" when the unit came back, "skipped" for policy
	// none, and otherwise what went wrong: a job result ("failed",
	// "canceled", ...), the state the unit ended in ("failed",
	// "inactive"), or "timeout".
	Result string `json:"result"`
	// Err says what went wrong, naming the unit; nil on success.
	Err error `json:"-"`
	// Error is Err's text, for the report.
	Error string `json:"error,omitempty"`
}

// OK reports whether the unit came back (or was left alone by policy).
func (o Outcome) OK() bool { return o.Err == nil }

// Find returns the active service units that consume a changed credential,
// sorted by name, with the action their policies call for. A unit whose
// changed credentials all have policy none is returned with Action None.
//
// A unit consumes credential NAME of the store when one of its
// LoadCredential= or LoadCredentialEncrypted= entries reads NAME by name
// (LoadCredential=NAME, LoadCredential=ID:NAME: systemd searches the
// credstores for it), by path (ID:/run/credstore/NAME) or reads the whole
// store (ID:/run/credstore), or when one of its ImportCredential= globs
// matches NAME as systemd's glob does. Matching by name is deliberately
// broad: a same-named credential in an earlier credstore
// (/run/credentials/@system, /etc/credstore) shadows vmcred's, and such a
// unit is restarted for nothing rather than missed.
func Find(ctx context.Context, sd Systemd, changes []Change, opts Options) ([]Target, error) {
	store := strings.TrimRight(cmp.Or(opts.Store, DefaultStore), "/")
	policy := map[string]Policy{}
	for _, c := range changes {
		p, err := ParsePolicy(string(c.Policy))
		if err != nil {
			return nil, fmt.Errorf("credential %q: %w", c.Name, err)
		}
		if old, ok := policy[c.Name]; !ok || p.rank() > old.rank() {
			policy[c.Name] = p
		}
	}
	if len(policy) == 0 {
		return nil, nil
	}
	units, err := sd.ActiveServices(ctx)
	if err != nil {
		return nil, fmt.Errorf("list active services: %w", err)
	}
	slices.SortFunc(units, func(a, b UnitState) int { return strings.Compare(a.Name, b.Name) })
	var out []Target
	for _, u := range units {
		if slices.Contains(opts.Exclude, u.Name) {
			continue
		}
		creds, err := sd.Credentials(ctx, u.Name)
		if err != nil {
			return nil, fmt.Errorf("read the credential settings of %s: %w", u.Name, err)
		}
		var names []string
		action := None
		for name, p := range policy {
			if creds.consumes(store, name) {
				names = append(names, name)
				if p.rank() > action.rank() {
					action = p
				}
			}
		}
		if len(names) == 0 {
			continue
		}
		slices.Sort(names)
		out = append(out, Target{Unit: u.Name, Action: action, Credentials: names})
	}
	return out, nil
}

// consumes reports whether the settings make the unit read credential name
// of store.
func (c UnitCredentials) consumes(store, name string) bool {
	for _, l := range slices.Concat(c.Load, c.LoadEncrypted) {
		if loadReads(store, l.Path, name) {
			return true
		}
	}
	for _, g := range c.Import {
		if GlobMatch(g, name) {
			return true
		}
	}
	return false
}

// loadReads reports whether a LoadCredential= path reads credential name
// of store. A relative path is a credential name, searched in the
// credstores; an absolute one is read as it is, a directory recursively.
func loadReads(store, path, name string) bool {
	if !strings.HasPrefix(path, "/") {
		return path == name
	}
	p := cleanPath(path)
	return p == store || p == store+"/"+name
}

// cleanPath collapses repeated and trailing slashes, as systemd's
// path_simplify does before it opens a path ("." and ".." are not valid in
// a LoadCredential= path).
func cleanPath(p string) string {
	b := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && len(b) > 0 && b[len(b)-1] == '/' {
			continue
		}
		b = append(b, p[i])
	}
	if len(b) > 1 && b[len(b)-1] == '/' {
		b = b[:len(b)-1]
	}
	return string(b)
}

// GlobMatch reports whether an ImportCredential= glob matches credential
// name the way systemd's load_credential_glob does: it passes
// "DIR/GLOB" to glob(3) (safe_glob, no GLOB_PERIOD), and
// credential_glob_valid allows '*' only as the last character. So a glob
// ending in '*' matches every name with the part before it as a prefix,
// except that a bare '*' does not match a name starting with '.'; any other
// glob matches only itself.
func GlobMatch(glob, name string) bool {
	prefix, wild := strings.CutSuffix(glob, "*")
	if !wild {
		return glob == name
	}
	if prefix == "" && strings.HasPrefix(name, ".") {
		return false
	}
	return strings.HasPrefix(name, prefix)
}

// Apply restarts or reloads, per policy, every active service unit that
// consumes a changed credential (see Find), one at a time in name order,
// and waits until each is active again. It returns one Outcome per
// consumer, units with policy none included (Result "skipped"). The error
// is nil when every unit came back; otherwise it joins one error per unit
// that did not, naming it. ctx bounds the whole call: a unit still not
// active at its deadline gets Result "timeout", and the units after it are
// not touched (Result "not attempted").
func Apply(ctx context.Context, sd Systemd, changes []Change, opts Options) ([]Outcome, error) {
	targets, err := Find(ctx, sd, changes, opts)
	if err != nil {
		return nil, err
	}
	out := make([]Outcome, 0, len(targets))
	var errs []error
	for _, t := range targets {
		o := Outcome{Unit: t.Unit, Action: t.Action, Credentials: t.Credentials}
		switch {
		case t.Action == None:
			o.Result = "skipped"
		case ctx.Err() != nil:
			o.Result = "not attempted"
			o.Err = fmt.Errorf("%s %s: not attempted: %w", t.Action, t.Unit, context.Cause(ctx))
		default:
			o.Result, o.Err = act(ctx, sd, t, opts)
		}
		if o.Err != nil {
			o.Error = o.Err.Error()
			errs = append(errs, o.Err)
		}
		out = append(out, o)
	}
	return out, errors.Join(errs...)
}

// act runs one restart or reload and waits for the unit to be active.
func act(ctx context.Context, sd Systemd, t Target, opts Options) (string, error) {
	job := sd.Restart
	if t.Action == Reload {
		job = sd.Reload
	}
	fail := func(result string, err error) (string, error) {
		return result, fmt.Errorf("%s %s (uses %s): %w", t.Action, t.Unit, strings.Join(t.Credentials, ", "), err)
	}
	result, err := job(ctx, t.Unit)
	switch {
	case ctx.Err() != nil:
		return fail("timeout", fmt.Errorf("no answer before the deadline: %w", context.Cause(ctx)))
	case err != nil:
		return fail("failed", err)
	case result != "done":
		return fail(result, fmt.Errorf("systemd's job ended %q", result))
	}
	poll := cmp.Or(opts.Poll, 100*time.Millisecond)
	sleep := opts.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	for {
		st, err := sd.State(ctx, t.Unit)
		if err != nil && ctx.Err() == nil {
			return fail("failed", fmt.Errorf("read its state: %w", err))
		}
		switch {
		case err == nil && st.ActiveState == "active":
			return "active", nil
		case err == nil && (st.ActiveState == "failed" || st.ActiveState == "inactive"):
			return fail(st.ActiveState, fmt.Errorf("did not come back: %s (%s)", st.ActiveState, st.SubState))
		}
		if err := sleep(ctx, poll); err != nil {
			return fail("timeout", fmt.Errorf("still %s (%s) at the deadline: %w", st.ActiveState, st.SubState, context.Cause(ctx)))
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
