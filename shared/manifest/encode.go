package manifest

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// Wire constants; doc.go describes the layout.
const (
	bodyMagic = "VMCM"

	flagNotAfter  = 1 << 0
	flagChallenge = 1 << 1
	flagBudget    = 1 << 2
	flagsKnown    = flagNotAfter | flagChallenge | flagBudget

	attrDelivery    = 0x0f
	attrStatic      = 1 << 4
	attrPolicy      = 3 << 5
	attrPolicyShift = 5
	attrKnown       = attrDelivery | attrStatic | attrPolicy

	// minEntryLen is the smallest encoded entry: name length and one byte,
	// size, digest, attr.
	minEntryLen = 1 + 1 + 1 + 32 + 1
)

// MarshalBinary validates m and returns its canonical encoding, with the
// entries sorted by name. It refuses duplicate names rather than picking one.
// The result holds digests of the values: keep it where the values are.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	entries := sortedEntries(m.Entries)
	defer wipeDigests(entries)

	size := 4 + 1 + 1 + 1 + len(m.VM) + ChallengeSize + 2*binary.MaxVarintLen64 + 8 + 8
	for _, e := range entries {
		size += 1 + len(e.Name) + binary.MaxVarintLen64 + 32 + 1
	}
	b := make([]byte, 0, size)
	b = append(b, bodyMagic...)
	b = append(b, Version)
	var flags byte
	if !m.NotAfter.IsZero() {
		flags |= flagNotAfter
	}
	if m.HasChallenge() {
		flags |= flagChallenge
	}
	if m.Budget > 0 {
		flags |= flagBudget
	}
	b = append(b, flags)
	b = appendStr8(b, m.VM)
	if flags&flagChallenge != 0 {
		b = append(b, m.Challenge[:]...)
	}
	b = binary.AppendUvarint(b, m.Generation)
	b = binary.BigEndian.AppendUint64(b, uint64(m.IssuedAt.Unix()))
	if flags&flagNotAfter != 0 {
		b = binary.BigEndian.AppendUint64(b, uint64(m.NotAfter.Unix()))
	}
	if flags&flagBudget != 0 {
		b = binary.AppendUvarint(b, uint64(m.Budget/time.Millisecond))
	}
	b = binary.AppendUvarint(b, uint64(len(entries)))
	for _, e := range entries {
		b = appendStr8(b, e.Name)
		b = binary.AppendUvarint(b, e.Size)
		b = append(b, e.SHA256[:]...)
		attr := byte(e.Delivery) | byte(e.Policy)<<attrPolicyShift
		if e.Static {
			attr |= attrStatic
		}
		b = append(b, attr)
	}
	return b, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler with Unmarshal's rules.
func (m *Manifest) UnmarshalBinary(data []byte) error {
	v, err := Unmarshal(data)
	if err != nil {
		return err
	}
	*m = *v
	return nil
}

// wipeDigests clears the digests of entries: a digest of a secret is
// secret (a guessable password falls to it), so a copy nobody needs any
// more is cleared rather than left in a freed buffer.
func wipeDigests(entries []Entry) {
	for i := range entries {
		clear(entries[i].SHA256[:])
	}
}

// sortedEntries returns a copy of entries sorted by name.
func sortedEntries(entries []Entry) []Entry {
	s := slices.Clone(entries)
	slices.SortFunc(s, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return s
}

func appendStr8(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

// Unmarshal decodes a manifest body. It is strict: it accepts exactly the
// encodings MarshalBinary produces, so MarshalBinary(Unmarshal(x)) == x for
// every x it accepts. Errors are *DecodeError (with the offset) wrapping
// ErrMalformed, ErrNotCanonical, ErrInvalid (perhaps through an
// *EntryError), or a *VersionError. The returned manifest does not share
// memory with data.
func Unmarshal(data []byte) (*Manifest, error) {
	d := decoder{what: "manifest", data: data}
	m, err := d.manifest()
	if err != nil {
		return nil, &DecodeError{What: d.what, Offset: d.errOff, Err: err}
	}
	return m, nil
}

// decoder reads fields in order; off is the next byte, errOff where the
// field that failed starts.
type decoder struct {
	what   string
	data   []byte
	off    int
	errOff int
}

func (d *decoder) fail(err error) error {
	d.errOff = d.off
	return err
}

// take returns the next n bytes, or ErrMalformed naming field.
func (d *decoder) take(n int, field string) ([]byte, error) {
	if n > len(d.data)-d.off {
		return nil, d.fail(fmt.Errorf("%w: truncated in %s (%d bytes left)", ErrMalformed, field, len(d.data)-d.off))
	}
	b := d.data[d.off : d.off+n]
	d.off += n
	return b, nil
}

func (d *decoder) byte(field string) (byte, error) {
	b, err := d.take(1, field)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (d *decoder) uint64(field string) (uint64, error) {
	b, err := d.take(8, field)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// uvarint reads a shortest-form uvarint no larger than limit.
func (d *decoder) uvarint(field string, limit uint64) (uint64, error) {
	v, n := binary.Uvarint(d.data[d.off:])
	switch {
	case n == 0:
		return 0, d.fail(fmt.Errorf("%w: truncated in %s", ErrMalformed, field))
	case n < 0:
		return 0, d.fail(fmt.Errorf("%w: %s overflows 64 bits", ErrMalformed, field))
	case n != uvarintLen(v):
		return 0, d.fail(fmt.Errorf("%w: %s is not a shortest-form varint", ErrNotCanonical, field))
	case v > limit:
		return 0, d.fail(fmt.Errorf("%w: %s is over the limit of %d", ErrMalformed, field, limit))
	}
	d.off += n
	return v, nil
}

func uvarintLen(v uint64) int {
	return max(1, (bits.Len64(v)+6)/7)
}

// str8 reads a one-byte length and that many bytes, at least one.
func (d *decoder) str8(field string) (string, error) {
	start := d.off
	n, err := d.byte(field + " length")
	if err != nil {
		return "", err
	}
	if n == 0 {
		d.off = start
		return "", d.fail(fmt.Errorf("%w: %s is empty", ErrMalformed, field))
	}
	b, err := d.take(int(n), field)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// unixTime reads Unix seconds in 1..MaxUnix.
func (d *decoder) unixTime(field string) (time.Time, error) {
	start := d.off
	v, err := d.uint64(field)
	if err != nil {
		return time.Time{}, err
	}
	if v < 1 || v > MaxUnix {
		d.off = start
		return time.Time{}, d.fail(fmt.Errorf("%w: %s is outside 1 to %d", ErrMalformed, field, uint64(MaxUnix)))
	}
	return time.Unix(int64(v), 0).UTC(), nil
}

func (d *decoder) magic(want, field string) error {
	b, err := d.take(len(want), field)
	if err != nil {
		return err
	}
	if string(b) != want {
		d.off -= len(want)
		return d.fail(fmt.Errorf("%w: bad magic %q, want %q", ErrMalformed, b, want))
	}
	return nil
}

func (d *decoder) version() error {
	v, err := d.byte("version")
	if err != nil {
		return err
	}
	if v != Version {
		d.off--
		return d.fail(&VersionError{What: d.what, Version: v})
	}
	return nil
}

// check runs a validation on the field that started at start.
func (d *decoder) check(start int, err error) error {
	if err != nil {
		d.off = start
		return d.fail(err)
	}
	return nil
}

func (d *decoder) manifest() (*Manifest, error) {
	if err := d.magic(bodyMagic, "magic"); err != nil {
		return nil, err
	}
	if err := d.version(); err != nil {
		return nil, err
	}
	flags, err := d.byte("flags")
	if err != nil {
		return nil, err
	}
	if flags&^flagsKnown != 0 {
		d.off--
		return nil, d.fail(fmt.Errorf("%w: flags 0x%02x: unknown bits", ErrMalformed, flags))
	}
	m := &Manifest{}
	start := d.off
	if m.VM, err = d.str8("vm name"); err != nil {
		return nil, err
	}
	if err := d.check(start, validateVMName(m.VM)); err != nil {
		return nil, err
	}
	if flags&flagChallenge != 0 {
		start := d.off
		c, err := d.take(ChallengeSize, "challenge")
		if err != nil {
			return nil, err
		}
		copy(m.Challenge[:], c)
		if !m.HasChallenge() {
			d.off = start
			return nil, d.fail(fmt.Errorf("%w: challenge flag set but the challenge is all zero", ErrNotCanonical))
		}
	}
	if m.Generation, err = d.uvarint("generation", 1<<63); err != nil {
		return nil, err
	}
	if m.IssuedAt, err = d.unixTime("issued-at"); err != nil {
		return nil, err
	}
	if flags&flagNotAfter != 0 {
		start := d.off
		if m.NotAfter, err = d.unixTime("not-after"); err != nil {
			return nil, err
		}
		if !m.NotAfter.After(m.IssuedAt) {
			return nil, d.check(start, invalidf("not-after is not later than issued-at"))
		}
	}
	if flags&flagBudget != 0 {
		start := d.off
		ms, err := d.uvarint("session budget", uint64(MaxBudget/time.Millisecond))
		if err != nil {
			return nil, err
		}
		if ms == 0 {
			d.off = start
			return nil, d.fail(fmt.Errorf("%w: session budget flag set but the budget is 0", ErrNotCanonical))
		}
		m.Budget = time.Duration(ms) * time.Millisecond
	}
	count, err := d.uvarint("entry count", MaxEntries)
	if err != nil {
		return nil, err
	}
	// Every entry takes at least minEntryLen bytes, so a count the input
	// cannot hold fails here, before any allocation it would size.
	if rest := len(d.data) - d.off; count > uint64(rest/minEntryLen) {
		return nil, d.fail(fmt.Errorf("%w: entry count is more than the %d bytes left can hold", ErrMalformed, rest))
	}
	if count > 0 {
		m.Entries = make([]Entry, count)
	}
	for i := range m.Entries {
		if err := d.entry(m, i); err != nil {
			return nil, err
		}
	}
	if d.off != len(d.data) {
		return nil, d.fail(fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.data)-d.off))
	}
	return m, nil
}

// entry decodes entry i into m.Entries[i]; errors give its index.
//
// Decode errors quote nothing read from the input (a corrupt length could
// make a field run into a digest). Entries are named by index (and the error's offset); errors about a
// decoded manifest (Check, Matches) name credentials.
func (d *decoder) entry(m *Manifest, i int) error {
	if err := d.entryFields(m, i); err != nil {
		return &EntryError{Index: i, Err: err}
	}
	return nil
}

func (d *decoder) entryFields(m *Manifest, i int) error {
	e := &m.Entries[i]
	start := d.off
	name, err := d.str8("name")
	if err != nil {
		return err
	}
	if err := credential.ValidateName(name); err != nil {
		return d.check(start, invalidf("name: %s", nameProblem(name)))
	}
	if i > 0 {
		switch prev := m.Entries[i-1].Name; {
		case name == prev:
			return d.check(start, invalidf("same name as entry %d", i-1))
		case name < prev:
			return d.check(start, fmt.Errorf("%w: name sorts before entry %d's; entries must be sorted by name", ErrNotCanonical, i-1))
		}
	}
	e.Name = name
	if e.Size, err = d.uvarint("size", MaxEntrySize); err != nil {
		return err
	}
	sum, err := d.take(32, "sha256")
	if err != nil {
		return err
	}
	copy(e.SHA256[:], sum)
	attr, err := d.byte("attributes")
	if err != nil {
		return err
	}
	e.Delivery = Delivery(attr & attrDelivery)
	e.Static = attr&attrStatic != 0
	e.Policy = Policy((attr & attrPolicy) >> attrPolicyShift)
	if attr&^attrKnown != 0 || !e.Delivery.Valid() || !e.Policy.Valid() {
		d.off--
		return d.fail(fmt.Errorf("%w: attributes have unknown bits, an unknown delivery or an unknown policy", ErrMalformed))
	}
	// The size and delivery checks above come first so that the errors
	// here, which may print values, print none.
	return d.check(start, validateEntryFields(*e))
}

// nameProblem says why credential.ValidateName refused name without
// quoting any of it.
func nameProblem(name string) string {
	switch {
	case name == "." || name == "..":
		return "is . or .."
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == '/' || c == ':' {
			return fmt.Sprintf("byte %d is not printable ASCII other than '/' and ':'", i)
		}
	}
	return "not a valid credential name"
}
