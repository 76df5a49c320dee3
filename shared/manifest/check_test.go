package manifest

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/credential"
)

func TestCheck(t *testing.T) {
	m := fixture(t) // not-after is fixtureTime + 1h
	noExpiry := fixture(t)
	noExpiry.NotAfter = time.Time{}
	for _, tc := range []struct {
		name string
		m    *Manifest
		now  time.Time
		vm   string
		want error
		text string
	}{
		{"valid", m, fixtureTime.Add(time.Minute), "web-1", nil, ""},
		{"any vm", m, fixtureTime, "", nil, ""},
		{"at not-after", m, fixtureTime.Add(time.Hour), "web-1", nil, ""},
		{"clock behind issued-at", m, fixtureTime.Add(-24 * time.Hour), "web-1", nil, ""},
		{"expired", m, fixtureTime.Add(time.Hour + time.Second), "web-1", ErrExpired, "not after 2026-01-02T04:04:05Z, now 2026-01-02T04:04:06Z"},
		{"no not-after", noExpiry, fixtureTime.Add(100 * 365 * 24 * time.Hour), "web-1", nil, ""},
		{"wrong vm", m, fixtureTime, "web-2", ErrWrongVM, `issued for vm "web-1", this is "web-2"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.m.Check(tc.now, tc.vm)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not contain %q", err, tc.text)
			}
		})
	}
	var ee *ExpiredError
	if err := m.Check(fixtureTime.Add(2*time.Hour), ""); !errors.As(err, &ee) || !ee.NotAfter.Equal(m.NotAfter) {
		t.Errorf("expired error = %v, want an ExpiredError", err)
	}
}

func TestMatches(t *testing.T) {
	const value = "s3cr3t-test-vector\n"
	e, ok := fixture(t).Lookup("api-key")
	if !ok {
		t.Fatal("Lookup(api-key) found nothing")
	}
	if _, ok := fixture(t).Lookup("missing"); ok {
		t.Error("Lookup(missing) found an entry")
	}
	for _, tc := range []struct {
		name  string
		value string
		want  *MismatchError
		text  string
	}{
		{"match", value, nil, ""},
		{"truncated", value[:10], &MismatchError{Name: "api-key", Field: "size", WantSize: 19, GotSize: 10, WantSHA: e.SHA256}, `credential "api-key": size is 10 bytes, manifest says 19`},
		{"longer", value + "x", &MismatchError{Name: "api-key", Field: "size", WantSize: 19, GotSize: 20, WantSHA: e.SHA256}, "size is 20 bytes"},
		{"altered", strings.ToUpper(value), &MismatchError{Name: "api-key", Field: "sha256", WantSize: 19, GotSize: 19, WantSHA: e.SHA256}, `credential "api-key": sha256 differs from the manifest's c5f0fc7b… (size 19 bytes matches)`},
		{"empty", "", &MismatchError{Name: "api-key", Field: "size", WantSize: 19, GotSize: 0, WantSHA: e.SHA256}, "size is 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := e.Matches(credential.NewSecret([]byte(tc.value)))
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Matches = %v", err)
				}
				return
			}
			var me *MismatchError
			if !errors.As(err, &me) || !errors.Is(err, ErrMismatch) {
				t.Fatalf("Matches = %v, want a MismatchError", err)
			}
			if diff := cmp.Diff(tc.want, me); diff != "" {
				t.Errorf("MismatchError (-want +got):\n%s", diff)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not contain %q", err, tc.text)
			}
			if tc.value != "" && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(tc.value[:6])) {
				t.Errorf("error contains the value")
			}
		})
	}
	empty, _ := fixture(t).Lookup("empty")
	if err := empty.Matches(credential.Secret{}); err != nil {
		t.Errorf("empty value: %v", err)
	}
}

func TestBuilderRejects(t *testing.T) {
	v := credential.NewSecret([]byte("v"))
	b := NewBuilder("vm", fixtureTime)
	if err := b.Add("a", v, DeliverySMBIOS, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		cred     string
		d        Delivery
		text     string
		wantName string
	}{
		{"duplicate", "a", DeliveryFwCfg, "duplicate name (also entry 0)", "a"},
		{"bad name", "a/b", DeliverySMBIOS, `credential name "a/b": contains '/'`, ""},
		{"no delivery", "b", 0, "delivery(0) is not a valid delivery", "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := b.Add(tc.cred, v, tc.d, false)
			var ee *EntryError
			if !errors.As(err, &ee) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Add = %v, want an EntryError wrapping ErrInvalid", err)
			}
			if ee.Index != 1 || ee.Name != tc.wantName || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("Add = %v (index %d, name %q)", err, ee.Index, ee.Name)
			}
		})
	}
	if err := b.Add("c", v, DeliveryChannel, false); err != nil {
		t.Fatal(err)
	}
	m, err := b.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a", "c"}, []string{m.Entries[0].Name, m.Entries[1].Name}); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	var zero Builder
	if err := zero.Add("x", v, DeliverySMBIOS, false); err != nil {
		t.Errorf("zero Builder Add = %v", err)
	}
	if _, err := zero.Manifest(); !errors.Is(err, ErrInvalid) {
		t.Errorf("zero Builder Manifest = %v, want ErrInvalid (no vm name)", err)
	}
}

// TestBuilderEnvelope: signed with a key, the envelope opens as trusted
// with that key and holds the manifest Manifest returns; with nil it is
// unsigned; a builder whose manifest is invalid gives the same error as
// Manifest, and a bad key is refused.
func TestBuilderEnvelope(t *testing.T) {
	b := NewBuilder("vm", fixtureTime)
	if err := b.Add("a", credential.NewSecret([]byte("v")), DeliverySMBIOS, false); err != nil {
		t.Fatal(err)
	}
	want, err := b.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	env, err := b.Envelope(testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	m, ver, err := Open(env, []ed25519.PublicKey{testPub(1)})
	if err != nil || !ver.Trusted || ver.KeyID != KeyID(testPub(1)) {
		t.Fatalf("Open(signed) = %v, %+v", err, ver)
	}
	if diff := cmp.Diff(want.Entries[0].Name, m.Entries[0].Name); diff != "" || m.VM != "vm" {
		t.Errorf("opened manifest differs: vm %q (-want +got):\n%s", m.VM, diff)
	}
	env, err = b.Envelope(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ver, err := Open(env, nil); err != nil || ver.KeyID != "" {
		t.Errorf("Open(unsigned) = %v, key %q", err, ver.KeyID)
	}
	if _, err := b.Envelope(ed25519.PrivateKey{1, 2, 3}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Envelope(short key) = %v, want ErrInvalidKey", err)
	}
	var zero Builder
	if _, err := zero.Envelope(testKey(1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("zero Builder Envelope = %v, want ErrInvalid", err)
	}
}
