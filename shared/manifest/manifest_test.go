package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/credential"
)

// TestWireFormat states the format independently of MarshalBinary: the
// hand-written encoding in rawFixture must be what MarshalBinary produces.
func TestWireFormat(t *testing.T) {
	got := mustMarshal(t, fixture(t))
	if want := rawFixture().encode(); !bytes.Equal(got, want) {
		t.Fatalf("MarshalBinary differs from the documented layout: %s", firstDiff(got, want))
	}
	wantMin := []byte("VMCM\x02\x00\x01m" + "\x00" + "\x00\x00\x00\x00\x00\x00\x00\x01" + "\x00")
	if diff := cmp.Diff(wantMin, mustMarshal(t, minimal())); diff != "" {
		t.Errorf("minimal manifest (-want +got):\n%s", diff)
	}
}

// TestGolden checks the files in testdata against the fixture, so a change
// to the format or to signing cannot pass unnoticed.
func TestGolden(t *testing.T) {
	body := mustMarshal(t, fixture(t))
	unsigned, err := WrapUnsigned(body)
	if err != nil {
		t.Fatal(err)
	}
	minEnv, err := WrapUnsigned(mustMarshal(t, minimal()))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := MarshalPrivateKey(testKey(1))
	pub, _ := MarshalPublicKey(testPub(1))
	for _, tc := range []struct {
		name      string
		got, want []byte
	}{
		{"signed.vmce", mustSign(t, body, testKey(1)), goldenSigned},
		{"unsigned.vmce", unsigned, goldenUnsigned},
		{"minimal.vmce", minEnv, goldenMinimal},
		{"test-only.key", key, goldenKeyFile},
		{"test-only.pub", pub, goldenPubFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Equal(tc.got, tc.want) {
				t.Errorf("testdata/%s is stale (%s); if the change is intended, run go test -tags gentestdata -run TestWriteTestdata ./shared/manifest", tc.name, firstDiff(tc.got, tc.want))
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	maxName := strings.Repeat("n", credential.MaxNameLen)
	allSizes := &Manifest{VM: strings.Repeat("v", MaxVMNameLen), IssuedAt: time.Unix(MaxUnix-1, 0).UTC(), NotAfter: time.Unix(MaxUnix, 0).UTC(),
		Challenge: [ChallengeSize]byte{0xff}, Generation: 1 << 63,
		Entries: []Entry{{Name: maxName, SHA256: sha256.Sum256(nil), Delivery: DeliveryFwCfg, Policy: PolicyNone}}}
	for i, size := range []uint64{1, 127, 128, 16383, 16384, MaxEntrySize} {
		allSizes.Entries = append(allSizes.Entries, Entry{Name: fmt.Sprintf("s%d", i), Size: size, SHA256: [32]byte{byte(i)}, Delivery: DeliveryChannel, Static: i%2 == 0})
	}
	for _, tc := range []struct {
		name string
		m    *Manifest
	}{
		{"fixture", fixture(t)},
		{"minimal", minimal()},
		{"limits", allSizes},
		{"firmware manifest", &Manifest{VM: "ch", IssuedAt: fixtureTime, Entries: []Entry{{Name: "x", Size: 1, Delivery: DeliveryChannel, Policy: PolicyReload}}}},
		{"4096 entries", manyEntries(t, MaxEntries)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mustMarshal(t, tc.m)
			got, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.m, got, cmpOpts); diff != "" {
				t.Errorf("Unmarshal(MarshalBinary(m)) (-want +got):\n%s", diff)
			}
			if again := mustMarshal(t, got); !bytes.Equal(again, b) {
				t.Errorf("re-encoding differs: %s", firstDiff(again, b))
			}
			var viaIface Manifest
			if err := viaIface.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.m, &viaIface, cmpOpts); diff != "" {
				t.Errorf("UnmarshalBinary (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnmarshalDoesNotAlias(t *testing.T) {
	b := mustMarshal(t, fixture(t))
	m, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	clear(b)
	if diff := cmp.Diff(fixture(t), m, cmpOpts); diff != "" {
		t.Errorf("clearing the input changed the manifest (-want +got):\n%s", diff)
	}
}

// TestDeterministic: entries added in any order give identical bytes.
func TestDeterministic(t *testing.T) {
	want := mustMarshal(t, fixture(t))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			vals := fixtureValues()
			r.Shuffle(len(vals), func(i, j int) { vals[i], vals[j] = vals[j], vals[i] })
			b := NewBuilder("web-1", fixtureTime.Add(999*time.Millisecond))
			b.SetNotAfter(fixtureTime.Add(time.Hour))
			b.SetSession(fixtureChallenge(), fixtureGeneration)
			for _, v := range vals {
				e := NewEntry(v.name, credential.NewSecret([]byte(v.value)), v.d, v.static)
				e.Policy = fixturePolicy(v.name)
				if err := b.AddEntry(e); err != nil {
					t.Fatal(err)
				}
			}
			m, err := b.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			// MarshalBinary also sorts a hand-shuffled entry list.
			r.Shuffle(len(m.Entries), func(i, j int) { m.Entries[i], m.Entries[j] = m.Entries[j], m.Entries[i] })
			if got := mustMarshal(t, m); !bytes.Equal(got, want) {
				t.Errorf("order changed the encoding: %s", firstDiff(got, want))
			}
		})
	}
}

func TestMarshalRejects(t *testing.T) {
	ok := func() *Manifest { return fixture(t) }
	tooMany := manyEntries(t, 1)
	for len(tooMany.Entries) <= MaxEntries {
		tooMany.Entries = append(tooMany.Entries, Entry{Name: fmt.Sprintf("x%05d", len(tooMany.Entries)), Size: 1, Delivery: DeliverySMBIOS})
	}
	for _, tc := range []struct {
		name      string
		edit      func(m *Manifest)
		wantEntry int // index in EntryError, or -1 for none
		wantText  string
	}{
		{"empty vm", func(m *Manifest) { m.VM = "" }, -1, "vm name is empty"},
		{"vm with slash", func(m *Manifest) { m.VM = "a/b" }, -1, "vm name"},
		{"vm with colon", func(m *Manifest) { m.VM = "a:b" }, -1, "vm name"},
		{"vm dotdot", func(m *Manifest) { m.VM = ".." }, -1, "vm name"},
		{"vm too long", func(m *Manifest) { m.VM = strings.Repeat("v", 256) }, -1, "256 bytes"},
		{"vm non-ascii", func(m *Manifest) { m.VM = "caf\xc3\xa9" }, -1, "byte 3 is not printable"},
		{"no issued-at", func(m *Manifest) { m.IssuedAt = time.Time{} }, -1, "issued-at is not set"},
		{"issued-at before 1970", func(m *Manifest) { m.IssuedAt = time.Unix(-5, 0) }, -1, "issued-at -5"},
		{"issued-at epoch", func(m *Manifest) { m.IssuedAt = time.Unix(0, 0) }, -1, "issued-at 0"},
		{"issued-at fraction", func(m *Manifest) { m.IssuedAt = m.IssuedAt.Add(time.Millisecond) }, -1, "fraction"},
		{"issued-at past 9999", func(m *Manifest) { m.IssuedAt = time.Unix(MaxUnix+1, 0) }, -1, "outside"},
		{"not-after equal", func(m *Manifest) { m.NotAfter = m.IssuedAt }, -1, "not later"},
		{"not-after before", func(m *Manifest) { m.NotAfter = m.IssuedAt.Add(-time.Second) }, -1, "not later"},
		{"not-after fraction", func(m *Manifest) { m.NotAfter = m.NotAfter.Add(1) }, -1, "fraction"},
		{"bad entry name", func(m *Manifest) { m.Entries[2].Name = "a:b" }, 2, "contains ':'"},
		{"empty entry name", func(m *Manifest) { m.Entries[0].Name = "" }, 0, "empty"},
		{"duplicate", func(m *Manifest) { m.Entries[4].Name = m.Entries[1].Name }, 4, "duplicate name (also entry 1)"},
		{"size over limit", func(m *Manifest) { m.Entries[1].Size = MaxEntrySize + 1 }, 1, "over the 67108864-byte limit"},
		{"delivery unset", func(m *Manifest) { m.Entries[1].Delivery = 0 }, 1, "delivery(0)"},
		{"delivery unknown", func(m *Manifest) { m.Entries[1].Delivery = 4 }, 1, "delivery(4)"},
		{"policy unknown", func(m *Manifest) { m.Entries[2].Policy = 3 }, 2, "policy(3)"},
		{"empty value wrong digest", func(m *Manifest) { m.Entries[1].Size = 0 }, 1, "size 0"},
		{"too many entries", func(m *Manifest) { *m = *tooMany }, -1, "4097 entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ok()
			tc.edit(m)
			_, err := m.MarshalBinary()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("MarshalBinary error = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not contain %q", err, tc.wantText)
			}
			if leaksToken(err.Error()) {
				t.Errorf("error leaks the token")
			}
			var ee *EntryError
			switch {
			case tc.wantEntry < 0 && errors.As(err, &ee):
				t.Errorf("error %v is an EntryError", err)
			case tc.wantEntry >= 0 && !errors.As(err, &ee):
				t.Errorf("error %v is not an EntryError", err)
			case tc.wantEntry >= 0 && ee.Index != tc.wantEntry:
				t.Errorf("EntryError index %d, want %d", ee.Index, tc.wantEntry)
			}
			if err := m.Validate(); !errors.Is(err, ErrInvalid) {
				t.Errorf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestUnmarshalRejects(t *testing.T) {
	uv := func(v uint64) []byte { return binary.AppendUvarint(nil, v) }
	for _, tc := range []struct {
		name    string
		edit    func(r *raw)
		want    error
		wantOff int // -1: do not check
		text    string
	}{
		{"bad magic", func(r *raw) { r.magic = "VMCE" }, ErrMalformed, 0, "bad magic"},
		{"version 0", func(r *raw) { r.version = 0 }, ErrUnsupportedVersion, 4, "version 0 is not supported"},
		{"version 1", func(r *raw) { r.version = 1 }, ErrUnsupportedVersion, 4, "version 1 is not supported"},
		{"unknown flag", func(r *raw) { r.flags |= 16 }, ErrMalformed, 5, "flags 0x13"},
		{"version 1 token flag", func(r *raw) { r.flags |= 8 }, ErrMalformed, 5, "flags 0x0b"},
		{"empty vm name", func(r *raw) { r.vm = "" }, ErrMalformed, 6, "vm name is empty"},
		{"vm name with slash", func(r *raw) { r.vm = "a/b" }, ErrInvalid, 6, "vm name"},
		{"all-zero challenge", func(r *raw) { r.challenge = make([]byte, ChallengeSize) }, ErrNotCanonical, 12, "all zero"},
		{"non-minimal generation", func(r *raw) { r.generation = []byte{0x80, 0x00} }, ErrNotCanonical, 44, "not a shortest-form varint"},
		{"generation over 2^63", func(r *raw) { r.generation = uv(1<<63 + 1) }, ErrMalformed, 44, "over the limit"},
		{"issued-at zero", func(r *raw) { r.issued = 0 }, ErrMalformed, 46, "issued-at is outside"},
		{"issued-at past 9999", func(r *raw) { r.issued = MaxUnix + 1 }, ErrMalformed, 46, "outside"},
		{"issued-at overflows int64", func(r *raw) { r.issued = 1 << 63 }, ErrMalformed, 46, "outside"},
		{"not-after equal", func(r *raw) { r.notAfter = r.issued }, ErrInvalid, 54, "not later"},
		{"non-minimal count", func(r *raw) { r.count = []byte{0x86, 0x00} }, ErrNotCanonical, -1, "not a shortest-form varint"},
		{"count over limit", func(r *raw) { r.count = uv(MaxEntries + 1) }, ErrMalformed, -1, "over the limit"},
		{"count overflows", func(r *raw) { r.count = bytes.Repeat([]byte{0xff}, 11) }, ErrMalformed, -1, "overflows"},
		{"count beyond data", func(r *raw) { r.count = uv(200) }, ErrMalformed, -1, "more than the"},
		{"count short of data", func(r *raw) { r.count = uv(5) }, ErrMalformed, -1, "trailing bytes"},
		{"trailing byte", func(r *raw) { r.trailing = []byte{0} }, ErrMalformed, -1, "1 trailing bytes"},
		{"unsorted", func(r *raw) { r.entries[1], r.entries[2] = r.entries[2], r.entries[1] }, ErrNotCanonical, -1, "name sorts before entry 1's"},
		{"duplicate", func(r *raw) { r.entries[2].name = r.entries[1].name }, ErrInvalid, -1, "same name as entry 1"},
		{"empty entry name", func(r *raw) { r.entries[0].name = "" }, ErrMalformed, -1, "name is empty"},
		{"bad entry name", func(r *raw) { r.entries[0].name = "a/b" }, ErrInvalid, -1, "byte 1 is not printable"},
		{"entry name dot", func(r *raw) { r.entries[0].name = "." }, ErrInvalid, -1, "is . or .."},
		{"non-minimal size", func(r *raw) { r.entries[1].size = []byte{0x93, 0x00} }, ErrNotCanonical, -1, "not a shortest-form varint"},
		{"size over limit", func(r *raw) { r.entries[1].size = uv(MaxEntrySize + 1) }, ErrMalformed, -1, "over the limit"},
		{"size 0 wrong digest", func(r *raw) { r.entries[1].size = uv(0) }, ErrInvalid, -1, "size 0"},
		{"delivery 0", func(r *raw) { r.entries[1].attr = 0 }, ErrMalformed, -1, "attributes have unknown"},
		{"delivery 4", func(r *raw) { r.entries[1].attr = 4 }, ErrMalformed, -1, "attributes have unknown"},
		{"delivery 15 static", func(r *raw) { r.entries[1].attr = 0x1f }, ErrMalformed, -1, "attributes have unknown"},
		{"reserved attr bit", func(r *raw) { r.entries[1].attr = 0x81 }, ErrMalformed, -1, "attributes have unknown"},
		{"policy 3", func(r *raw) { r.entries[1].attr = 0x61 }, ErrMalformed, -1, "unknown policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rawFixture()
			tc.edit(&r)
			m, err := Unmarshal(r.encode())
			if err == nil {
				t.Fatalf("Unmarshal accepted it: %+v", m)
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %v does not wrap %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not contain %q", err, tc.text)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a DecodeError", err)
			}
			if tc.wantOff >= 0 && de.Offset != tc.wantOff {
				t.Errorf("offset %d, want %d (%v)", de.Offset, tc.wantOff, err)
			}
			if leaksToken(err.Error()) {
				t.Errorf("error leaks the token")
			}
		})
	}
}

// TestUnmarshalEntryErrors checks that entry errors name the entry.
func TestUnmarshalEntryErrors(t *testing.T) {
	r := rawFixture()
	r.entries[3].attr = 9
	_, err := Unmarshal(r.encode())
	var ee *EntryError
	if !errors.As(err, &ee) {
		t.Fatalf("error %v is not an EntryError", err)
	}
	if diff := cmp.Diff(&EntryError{Index: 3}, ee, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Err" }, cmp.Ignore())); diff != "" {
		t.Errorf("EntryError (-want +got):\n%s", diff)
	}
	if want := "decode manifest at byte 236: entry 3: malformed manifest: attributes"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	var ve *VersionError
	r = rawFixture()
	r.version = 9
	if _, err := Unmarshal(r.encode()); !errors.As(err, &ve) || ve.Version != 9 || ve.What != "manifest" {
		t.Errorf("version error = %v", err)
	}
}

// TestTruncated: every proper prefix of a valid encoding is refused as
// malformed, never accepted and never a panic.
func TestTruncated(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"fixture", mustMarshal(t, fixture(t))},
		{"minimal", mustMarshal(t, minimal())},
		{"100 entries", mustMarshal(t, manyEntries(t, 100))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for n := range len(tc.body) {
				if _, err := Unmarshal(tc.body[:n]); !errors.Is(err, ErrMalformed) {
					t.Fatalf("Unmarshal(first %d of %d bytes) error = %v, want ErrMalformed", n, len(tc.body), err)
				}
			}
		})
	}
}

// TestMutations flips every bit of a valid body: each result is refused,
// or accepted only if it re-encodes to the identical bytes.
func TestMutations(t *testing.T) {
	body := mustMarshal(t, fixture(t))
	accepted := 0
	for i := range len(body) * 8 {
		b := bytes.Clone(body)
		b[i/8] ^= 1 << (i % 8)
		m, err := Unmarshal(b)
		if err != nil {
			if leaksToken(err.Error()) {
				t.Fatalf("bit %d: error leaks the token", i)
			}
			continue
		}
		accepted++
		if again := mustMarshal(t, m); !bytes.Equal(again, b) {
			t.Fatalf("bit %d: accepted input re-encodes differently: %s", i, firstDiff(again, b))
		}
	}
	t.Logf("%d of %d single-bit mutations decode (nonce, times, token, digests are free bytes)", accepted, len(body)*8)
}

func TestDelivery(t *testing.T) {
	for _, tc := range []struct {
		d    Delivery
		text string
	}{{DeliverySMBIOS, "smbios"}, {DeliveryFwCfg, "fwcfg"}, {DeliveryChannel, "channel"}} {
		t.Run(tc.text, func(t *testing.T) {
			if got := tc.d.String(); got != tc.text {
				t.Errorf("String = %q, want %q", got, tc.text)
			}
			got, err := ParseDelivery(tc.text)
			if err != nil || got != tc.d {
				t.Errorf("ParseDelivery(%q) = %v, %v", tc.text, got, err)
			}
			txt, err := tc.d.MarshalText()
			if err != nil || string(txt) != tc.text {
				t.Errorf("MarshalText = %q, %v", txt, err)
			}
			var back Delivery
			if err := back.UnmarshalText(txt); err != nil || back != tc.d {
				t.Errorf("UnmarshalText = %v, %v", back, err)
			}
		})
	}
	for _, s := range []string{"", "SMBIOS", "fw_cfg", "vsock", strings.Repeat("x", 100)} {
		if _, err := ParseDelivery(s); !errors.Is(err, ErrInvalid) || len(err.Error()) > 120 {
			t.Errorf("ParseDelivery(%.20q) error = %v, want a short ErrInvalid", s, err)
		}
	}
	if s := Delivery(0).String(); s != "delivery(0)" {
		t.Errorf("Delivery(0).String() = %q", s)
	}
	if _, err := Delivery(7).MarshalText(); !errors.Is(err, ErrInvalid) {
		t.Errorf("MarshalText(7) error = %v", err)
	}
}

// TestChallengeFlagAllZero: a challenge flag with an all-zero challenge
// is refused (a firmware manifest is written without the flag), so each
// manifest has one encoding.
func TestChallengeFlagAllZero(t *testing.T) {
	r := rawFixture()
	r.challenge = make([]byte, ChallengeSize)
	if _, err := Unmarshal(r.encode()); !errors.Is(err, ErrNotCanonical) {
		t.Fatalf("Unmarshal = %v, want ErrNotCanonical", err)
	}
}

// TestBudgetRoundTrip: the session budget survives encoding in whole
// milliseconds, is absent when zero, and an encoding with the flag but a
// zero budget is refused as not canonical.
func TestBudgetRoundTrip(t *testing.T) {
	b := NewBuilder("vm1", time.Unix(1_700_000_000, 0))
	b.SetSession([ChallengeSize]byte{1}, 7)
	b.SetBudget(90*time.Second + 1234*time.Microsecond)
	if err := b.Add("API_KEY", credential.NewSecret([]byte("v")), DeliveryChannel, false); err != nil {
		t.Fatal(err)
	}
	m := b.m
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got.Budget != 90*time.Second+time.Millisecond {
		t.Errorf("budget %s, want 1m30.001s", got.Budget)
	}
	m.Budget = 0
	plain, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Unmarshal(plain); err != nil || got.Budget != 0 {
		t.Errorf("without a budget: %v", err)
	}
	// Set the flag by hand with a zero budget.
	bad := slices.Clone(plain)
	bad[5] |= flagBudget
	i := 4 + 1 + 1 + 1 + len("vm1") + ChallengeSize + 1 + 8
	bad = slices.Insert(bad, i, 0)
	if _, err := Unmarshal(bad); !errors.Is(err, ErrNotCanonical) {
		t.Errorf("zero budget with the flag: %v, want ErrNotCanonical", err)
	}
	m.Budget = MaxBudget + time.Millisecond
	if _, err := m.MarshalBinary(); !errors.Is(err, ErrInvalid) {
		t.Errorf("budget over MaxBudget: %v, want ErrInvalid", err)
	}
}
