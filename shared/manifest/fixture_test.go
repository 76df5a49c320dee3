package manifest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/credential"
)

// Golden encodings of fixture(), written by `go test -tags gentestdata -run
// TestWriteTestdata ./shared/manifest` (gentestdata_test.go) and checked by
// TestGolden. Other packages' tests may use them too.
var (
	//go:embed testdata/signed.vmce
	goldenSigned []byte
	//go:embed testdata/unsigned.vmce
	goldenUnsigned []byte
	//go:embed testdata/minimal.vmce
	goldenMinimal []byte
	//go:embed testdata/test-only.key
	goldenKeyFile []byte
	//go:embed testdata/test-only.pub
	goldenPubFile []byte
)

// canaryToken is the fixture's db-password value. No error message or
// test output may contain it, or its digest, in any form.
const canaryToken = "canary-token:never-print-this!!!"

// testKey returns a deterministic Ed25519 key; n tells keys apart.
func testKey(n int) ed25519.PrivateKey {
	seed := sha256.Sum256(fmt.Appendf(nil, "vmcred manifest test key %d", n))
	return ed25519.NewKeyFromSeed(seed[:])
}

func testPub(n int) ed25519.PublicKey { return testKey(n).Public().(ed25519.PublicKey) }

var fixtureTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func fixtureChallenge() (n [ChallengeSize]byte) {
	for i := range n {
		n[i] = byte(i + 1)
	}
	return n
}

// fixtureGeneration is the fixture's generation: more than one varint byte.
const fixtureGeneration = 300

// fixtureValues are the fixture's credentials, in an order that is not
// sorted, with every delivery, a static string and an empty value.
func fixtureValues() []struct {
	name   string
	value  string
	d      Delivery
	static bool
} {
	return []struct {
		name   string
		value  string
		d      Delivery
		static bool
	}{
		{"tls.key", strings.Repeat("k", 2000), DeliveryFwCfg, false},
		{"api-key", "s3cr3t-test-vector\n", DeliverySMBIOS, false},
		{"ENVIRONMENT", "test", DeliverySMBIOS, true},
		{"db-password", canaryToken, DeliveryChannel, false},
		{"empty", "", DeliverySMBIOS, false},
		{"vmm.notify_socket", "vsock-stream:2:8888", DeliverySMBIOS, true},
	}
}

// fixture is the manifest the golden files hold.
func fixture(t testing.TB) *Manifest {
	t.Helper()
	b := NewBuilder("web-1", fixtureTime)
	b.SetNotAfter(fixtureTime.Add(time.Hour))
	b.SetSession(fixtureChallenge(), fixtureGeneration)
	for _, v := range fixtureValues() {
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
	return m
}

// fixturePolicy gives the fixture's entries every policy.
func fixturePolicy(name string) Policy {
	switch name {
	case "tls.key":
		return PolicyReload
	case "ENVIRONMENT":
		return PolicyNone
	}
	return PolicyRestart
}

// minimal is a manifest with no optional field and no entries.
func minimal() *Manifest {
	return &Manifest{VM: "m", IssuedAt: time.Unix(1, 0).UTC()}
}

// manyEntries is a signed-size manifest with n channel entries.
func manyEntries(t testing.TB, n int) *Manifest {
	t.Helper()
	b := NewBuilder("bench-vm", fixtureTime)
	b.SetSession(fixtureChallenge(), 1)
	for i := range n {
		if err := b.Add(fmt.Sprintf("credential-%04d", i), credential.NewSecret(fmt.Appendf(nil, "value %d", i)), DeliveryChannel, false); err != nil {
			t.Fatal(err)
		}
	}
	m, err := b.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustMarshal(t testing.TB, m *Manifest) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustSign(t testing.TB, body []byte, key ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := Sign(body, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cmpOpts compares Secrets by value; cmp prints them as Redacted.
var cmpOpts = cmp.Options{cmp.Comparer(func(a, b credential.Secret) bool { return a.Equal(b) })}

// leaksToken reports whether s shows the canary value, or its digest, in
// any usual form.
//
// A key ID that an error names ("ed25519 key <16 hex digits>") is taken
// out first: it is the envelope's own public field, echoed from the input,
// and a fuzzer that copies the canary's digest prefix from a seed into
// that field would otherwise look like a leak.
func leaksToken(s string) bool {
	s = dropKeyIDs(s)
	tok := []byte(canaryToken)
	sum := sha256.Sum256(tok)
	for _, form := range []string{canaryToken, hex.EncodeToString(tok), base64.StdEncoding.EncodeToString(tok), fmt.Sprintf("%q", tok), "never-print", hex.EncodeToString(sum[:8])} {
		if strings.Contains(s, form) {
			return true
		}
	}
	return false
}

// dropKeyIDs removes the key IDs that KeyError names from s.
func dropKeyIDs(s string) string {
	const tag = "ed25519 key "
	var b strings.Builder
	for {
		i := strings.Index(s, tag)
		if i < 0 || len(s) < i+len(tag)+16 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+len(tag)])
		s = s[i+len(tag)+16:]
	}
}

// firstDiff describes where two encodings differ without printing them
// (they hold digests).
func firstDiff(got, want []byte) string {
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("got %d bytes, want %d; first difference at byte %d", len(got), len(want), i)
}

// raw writes a body field by field as doc.go specifies, without any
// validation, so tests can state the format independently of MarshalBinary
// and build inputs it would refuse.
type raw struct {
	magic      string
	version    byte
	flags      byte
	vm         string
	challenge  []byte // nil: none (flag bit 1 decides whether it is written)
	generation []byte // uvarint bytes
	issued     uint64
	notAfter   uint64
	count      []byte // uvarint bytes; nil: shortest form of len(entries)
	entries    []rawEntry
	trailing   []byte
}

type rawEntry struct {
	name string
	size []byte // uvarint bytes
	sum  [32]byte
	attr byte
}

func (r raw) encode() []byte {
	var b bytes.Buffer
	b.WriteString(r.magic)
	b.WriteByte(r.version)
	b.WriteByte(r.flags)
	b.WriteByte(byte(len(r.vm)))
	b.WriteString(r.vm)
	if r.flags&2 != 0 {
		b.Write(r.challenge)
	}
	if r.generation == nil {
		b.WriteByte(0)
	} else {
		b.Write(r.generation)
	}
	b.Write(binary.BigEndian.AppendUint64(nil, r.issued))
	if r.flags&1 != 0 {
		b.Write(binary.BigEndian.AppendUint64(nil, r.notAfter))
	}
	if r.count == nil {
		b.Write(binary.AppendUvarint(nil, uint64(len(r.entries))))
	} else {
		b.Write(r.count)
	}
	for _, e := range r.entries {
		b.WriteByte(byte(len(e.name)))
		b.WriteString(e.name)
		b.Write(e.size)
		b.Write(e.sum[:])
		b.WriteByte(e.attr)
	}
	b.Write(r.trailing)
	return b.Bytes()
}

// rawFixture is fixture() spelled out by hand.
func rawFixture() raw {
	ent := func(name, value string, attr byte) rawEntry {
		return rawEntry{name: name, size: binary.AppendUvarint(nil, uint64(len(value))), sum: sha256.Sum256([]byte(value)), attr: attr}
	}
	ch := fixtureChallenge()
	return raw{
		magic: "VMCM", version: 2, flags: 1 | 2,
		vm:         "web-1",
		challenge:  ch[:],
		generation: binary.AppendUvarint(nil, fixtureGeneration),
		issued:     uint64(fixtureTime.Unix()),
		notAfter:   uint64(fixtureTime.Unix()) + 3600,
		entries: []rawEntry{ // bytewise order: upper case first
			ent("ENVIRONMENT", "test", 1|0x10|2<<5),
			ent("api-key", "s3cr3t-test-vector\n", 1),
			ent("db-password", canaryToken, 3),
			ent("empty", "", 1),
			ent("tls.key", strings.Repeat("k", 2000), 2|1<<5),
			ent("vmm.notify_socket", "vsock-stream:2:8888", 1|0x10),
		},
	}
}
