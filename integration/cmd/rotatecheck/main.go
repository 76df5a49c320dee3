// Command rotatecheck is the tier-2 VM test's stand-in for the agent's
// rotation step (integration/vm/rotate_test.go): it does, inside a real
// systemd guest, what the agent does after it has verified generation N+1,
// with the same two calls: credstore.Store.Rotate, then consumers.Apply.
// It is a test tool, not part of vmcred: the new values come from files
// instead of a signed push.
//
//	rotatecheck --store /run/credstore --state /run/vmcred/credstore.state \
//	    --set API_KEY=/etc/new/API_KEY:restart [--set NAME=FILE:POLICY ...] \
//	    [--exclude UNIT ...] [--timeout 60s]
//
// The new set is every credential file now in the store, with the --set
// ones replaced (or added). It prints one "ROTATECHECK-ROTATION {json}"
// line (names only), then one "ROTATECHECK-OUTCOME {json}" line per unit,
// and exits 0 when the set is in place and every consumer came back, 1 when
// a unit did not, 3 when the store could not be rotated (the error is
// printed; the old set stays).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/vmcred/vmcred/guest/consumers"
	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/shared/credential"
)

func main() {
	os.Exit(run())
}

func run() int {
	store := pflag.String("store", consumers.DefaultStore, "credstore to rotate")
	statePath := pflag.String("state", "/run/vmcred/credstore.state", "the agent's record of the files it wrote")
	sets := pflag.StringArray("set", nil, "NAME=FILE:POLICY: the new value of NAME, and its policy")
	exclude := pflag.StringArray("exclude", []string{"vmcred-guest.service"}, "units never restarted")
	timeout := pflag.Duration("timeout", 60*time.Second, "bound on the consumers' restarts")
	pflag.Parse()

	policy := map[string]consumers.Policy{}
	newValues := map[string]string{}
	for _, s := range *sets {
		name, rest, ok1 := strings.Cut(s, "=")
		file, pol, ok2 := strings.Cut(rest, ":")
		p, err := consumers.ParsePolicy(pol)
		if !ok1 || !ok2 || err != nil {
			fmt.Fprintf(os.Stderr, "rotatecheck: --set %q: want NAME=FILE:POLICY (%v)\n", s, err)
			return 2
		}
		policy[name], newValues[name] = p, file
	}

	entries, err := currentSet(*store)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
		return 3
	}
	for name, file := range newValues {
		b, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
			return 3
		}
		entries[name] = credential.NewSecret(b)
	}
	list := make([]credstore.Entry, 0, len(entries))
	for name, v := range entries {
		list = append(list, credstore.Entry{Name: name, Value: v})
	}

	s, err := credstore.Open(*store, credstore.Options{StatePath: *statePath})
	if err != nil {
		fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
		return 3
	}
	defer s.Close()
	start := time.Now()
	rot, err := s.Rotate(list)
	swap := time.Since(start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
		return 3
	}
	printJSON("ROTATECHECK-ROTATION", map[string]any{"rotation": rot, "changes": rot.Changes(), "swap_ms": swap.Milliseconds()})

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	sd, err := consumers.Connect(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
		return 3
	}
	defer sd.Close()
	var changes []consumers.Change
	for _, name := range rot.Changes() {
		changes = append(changes, consumers.Change{Name: name, Policy: policy[name]})
	}
	outcomes, err := consumers.Apply(ctx, sd, changes, consumers.Options{Store: *store, Exclude: *exclude})
	for _, o := range outcomes {
		printJSON("ROTATECHECK-OUTCOME", o)
	}
	fmt.Printf("ROTATECHECK-DONE %d unit(s) in %d ms\n", len(outcomes), time.Since(start).Milliseconds())
	if err != nil {
		fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
		return 1
	}
	return 0
}

// currentSet reads every credential file in the store.
func currentSet(store string) (map[string]credential.Secret, error) {
	ents, err := os.ReadDir(store)
	if err != nil {
		return nil, err
	}
	out := map[string]credential.Secret{}
	for _, e := range ents {
		if !e.Type().IsRegular() || credential.ValidateName(e.Name()) != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(store, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[e.Name()] = credential.NewSecret(b)
	}
	return out, nil
}

func printJSON(tag string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "rotatecheck: %v\n", err)
		return
	}
	fmt.Printf("%s %s\n", tag, b)
}
