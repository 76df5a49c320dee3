package channel

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzStateJSON: the serve-state decoder never panics, and what it accepts
// encodes back to a state it reads the same.
func FuzzStateJSON(f *testing.F) {
	fx := newFixture(f, map[string][]byte{"a": []byte("x"), "b": nil})
	b, err := json.Marshal(fx.state)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"version":1,"vm":"v","nonce":"00000000000000000000000000000000","channel":"unix:/x","issued_at":"2026-01-01T00:00:00Z","credentials":[]}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var st State
		if err := json.Unmarshal(in, &st); err != nil {
			return
		}
		out, err := json.Marshal(&st)
		if err != nil {
			t.Fatalf("marshal an accepted state: %v", err)
		}
		var back State
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("re-read: %v", err)
		}
		if diff := cmp.Diff(st, back); diff != "" {
			t.Errorf("round trip (-first +second):\n%s", diff)
		}
	})
}
