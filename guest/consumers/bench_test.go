//go:build linux

package consumers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/shared/credential"
)

// BenchmarkRotate100 is the guest's side of a rotation of 100 credentials
// with one consumer restarted: credstore.Store.Rotate on tmpfs, then Apply
// against a fake systemd of 50 services (one uses a changed credential).
// The fake stands for systemd's D-Bus answers at no cost, so this measures
// vmcred's own work, not systemd's restart. Sub-benchmarks: every value
// changes, or one does; Replace (per-file renames, not atomic) of the same
// set for comparison.
//
//	go test -run '^$' -bench Rotate100 -benchmem ./guest/consumers/
func BenchmarkRotate100(b *testing.B) {
	if _, err := os.Stat("/dev/shm"); err != nil {
		b.Skip("no /dev/shm")
	}
	sd := &fakeSystemd{units: map[string]*fakeUnit{}}
	for i := range 50 {
		sd.units[fmt.Sprintf("svc-%02d.service", i)] = &fakeUnit{state: "active", creds: UnitCredentials{Load: load("OTHER", "OTHER")}}
	}
	sd.units["svc-consumer.service"] = &fakeUnit{state: "active", creds: UnitCredentials{Load: load("cred-000", "cred-000")}}
	set := func(gen int, changing int) []credstore.Entry {
		es := make([]credstore.Entry, 100)
		for i := range es {
			g := 0
			if i < changing {
				g = gen
			}
			v := fmt.Sprintf("value of credential %d, generation %d, padded to look like a key: %064d", i, g, i)
			es[i] = credstore.Entry{Name: fmt.Sprintf("cred-%03d", i), Value: credential.NewSecret([]byte(v))}
		}
		return es
	}
	for _, bc := range []struct {
		name     string
		changing int
		replace  bool
	}{{"all-changed", 100, false}, {"one-changed", 1, false}, {"replace-all-changed", 100, true}} {
		b.Run(bc.name, func(b *testing.B) {
			base, err := os.MkdirTemp("/dev/shm", "vmcred-bench-")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(base)
			s, err := credstore.Open(filepath.Join(base, "credstore"), credstore.Options{StatePath: filepath.Join(base, "state", "credstore.state")})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Rotate(set(0, bc.changing)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				es := set(i+1, bc.changing)
				var changes []Change
				if bc.replace {
					if _, err := s.Replace(es); err != nil {
						b.Fatal(err)
					}
					changes = []Change{{Name: "cred-000"}}
				} else {
					rot, err := s.Rotate(es)
					if err != nil {
						b.Fatal(err)
					}
					for _, n := range rot.Changes() {
						changes = append(changes, Change{Name: n})
					}
				}
				out, err := Apply(context.Background(), sd, changes, Options{Sleep: noWait})
				if err != nil || len(out) != 1 {
					b.Fatalf("Apply: %v, %v", out, err)
				}
			}
		})
	}
}
