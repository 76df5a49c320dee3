// Package oemstring parses and formats systemd credentials carried as SMBIOS
// type-11 OEM strings ("io.systemd.credential:NAME=VALUE" and
// "io.systemd.credential.binary:NAME=BASE64"), with the exact semantics of
// systemd's parse_smbios_strings (src/core/import-creds.c), so that what the
// vmcred agent sees agrees with `systemd-creds --system list` on every string
// systemd can see. It also knows vmcred's own prefix, which systemd ignores.
//
// It is OS-free: host and guest packages may import it.
package oemstring

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/vmcred/vmcred/shared/credential"
)

// Prefixes of OEM strings that carry credentials. Matching is byte-wise and
// case-sensitive, as systemd's memory_startswith.
const (
	// PrefixText carries the value verbatim (no trimming, no newline added).
	PrefixText = "io.systemd.credential:"
	// PrefixBinary carries the value as padded standard base64.
	PrefixBinary = "io.systemd.credential.binary:"
	// PrefixVmcred is vmcred's own namespace for verified mode: base64 like
	// PrefixBinary, but stock systemd ignores it, so only what the agent
	// verified reaches services.
	PrefixVmcred = "io.vmcred.credential.binary:"
)

// SystemdPrefixes are the prefixes systemd itself imports.
var SystemdPrefixes = []string{PrefixText, PrefixBinary}

// AllPrefixes are the prefixes the vmcred agent reads.
var AllPrefixes = []string{PrefixText, PrefixBinary, PrefixVmcred}

// IsBinary reports whether values under prefix are base64-encoded.
func IsBinary(prefix string) bool { return prefix != PrefixText }

// Reason says why an OEM string was not taken as a credential.
type Reason string

// Reasons, with the wording of systemd's warnings where it has one.
const (
	ReasonNoPrefix      Reason = "not a credential string"
	ReasonNoEquals      Reason = "lacks '=' character"
	ReasonBadName       Reason = "name is not valid"
	ReasonBadBase64     Reason = "value is not valid base64"
	ReasonDuplicate     Reason = "credential set twice, first one wins"
	ReasonTooLarge      Reason = "credential over the 1 MiB limit"
	ReasonTotalTooLarge Reason = "accumulated credential size over the 1 MiB limit"
)

// Entry is one credential taken from an OEM string or a raw source.
type Entry struct {
	Name   string
	Value  credential.Secret
	Prefix string // one of the Prefix constants; "" for raw (fw_cfg) entries
	Source string // where the caller read it, e.g. "smbios" or "fw_cfg"
	Index  int    // position among everything added to the Parser
}

// Skip records an input that was not taken, and why. It never holds a value.
type Skip struct {
	Index  int
	Source string
	Name   string // the name as parsed, if the string got that far; may be invalid
	Prefix string
	Reason Reason
	Detail string // e.g. the base64 error's offset or the size involved
	// Count, when above 0, makes this a summary record: it stands for
	// Count inputs skipped for Reason that were not named (past
	// MaxSkipped); Index is -1 and Name, Prefix and Detail are empty.
	Count int
}

// MaxSkipped is how many skipped inputs a Result names in Skipped. The
// rest are only counted: a hostile table of 500,000 one-byte strings would
// otherwise cost a record, a warning line and a line of status.json each
// (issue 17, finding 7), where systemd itself logs one line per string.
const MaxSkipped = 32

// Result is what a Parser accepted and skipped, in input order.
type Result struct {
	Entries []Entry
	// Skipped names the first MaxSkipped inputs that were skipped.
	Skipped []Skip
	// SkippedTotal counts every skipped input, named in Skipped or not;
	// SkippedByReason counts them by reason (nil when none was skipped).
	SkippedTotal    int
	SkippedByReason map[Reason]int
	Total           int // decoded bytes accepted, counted against credential.MaxTotalSize
}

// SkippedUnnamed is how many skipped inputs no record of Skipped names.
func (r Result) SkippedUnnamed() int {
	n := r.SkippedTotal
	for _, s := range r.Skipped {
		if s.Count == 0 {
			n--
		}
	}
	return n
}

// Parser accumulates credentials from several sources with systemd's rules:
// first writer wins across everything added, one shared 1 MiB budget, and an
// invalid entry is skipped with a reason, never fatal.
//
// Add sources in systemd's precedence order (fw_cfg before SMBIOS) so that
// the same credential wins here as in /run/credentials/@system.
type Parser struct {
	prefixes []string
	seen     map[string]bool
	res      Result
	next     int
}

// NewParser returns a Parser that accepts strings under the given prefixes;
// with none it accepts SystemdPrefixes.
func NewParser(prefixes ...string) *Parser {
	if len(prefixes) == 0 {
		prefixes = SystemdPrefixes
	}
	return &Parser{prefixes: prefixes, seen: make(map[string]bool)}
}

// Result returns what was parsed so far. The slices are the Parser's own.
// When more than MaxSkipped inputs were skipped, Skipped ends with one
// summary record (Count > 0) per reason of the unnamed ones, in the order
// of the Reason constants.
func (p *Parser) Result() Result {
	r := p.res
	if r.SkippedUnnamed() == 0 {
		return r
	}
	unnamed := maps.Clone(r.SkippedByReason)
	for _, s := range r.Skipped {
		unnamed[s.Reason]--
	}
	r.Skipped = slices.Clip(r.Skipped)
	for _, reason := range reasonOrder {
		if n := unnamed[reason]; n > 0 {
			r.Skipped = append(r.Skipped, Skip{Index: -1, Reason: reason, Count: n})
		}
	}
	return r
}

// reasonOrder is the order of summary records.
var reasonOrder = []Reason{ReasonNoPrefix, ReasonNoEquals, ReasonBadName, ReasonBadBase64, ReasonDuplicate, ReasonTooLarge, ReasonTotalTooLarge}

// AddStrings parses OEM strings read from source, in order.
func (p *Parser) AddStrings(source string, strs []string) {
	p.res.Entries = slices.Grow(p.res.Entries, len(strs))
	for _, s := range strs {
		p.AddString(source, s)
	}
}

// AddString parses one OEM string. Empty strings are skipped silently and do
// not take an index, as in systemd, where they end the string set.
func (p *Parser) AddString(source, s string) {
	if s == "" {
		return
	}
	idx := p.next
	p.next++
	skip := func(name, prefix string, r Reason, detail string) {
		p.skip(Skip{Index: idx, Source: source, Name: name, Prefix: prefix, Reason: r, Detail: detail})
	}
	prefix := ""
	for _, pf := range p.prefixes {
		if strings.HasPrefix(s, pf) {
			prefix = pf
			break
		}
	}
	if prefix == "" {
		skip("", "", ReasonNoPrefix, "")
		return
	}
	name, value, ok := strings.Cut(s[len(prefix):], "=")
	if !ok {
		skip("", prefix, ReasonNoEquals, "")
		return
	}
	if err := credential.ValidateName(name); err != nil {
		var ne *credential.NameError
		detail := err.Error()
		if errors.As(err, &ne) {
			detail = ne.Reason
			name = ne.Name
		}
		skip(name, prefix, ReasonBadName, detail)
		return
	}
	var data []byte
	if IsBinary(prefix) {
		var err error
		data, err = DecodeBase64(value)
		if err != nil {
			skip(name, prefix, ReasonBadBase64, err.Error())
			return
		}
	} else {
		data = []byte(value)
	}
	p.take(idx, source, prefix, name, data)
}

// AddRaw adds a credential whose name and bytes arrived separately, as with
// fw_cfg's opt/io.systemd.credentials/NAME entries.
func (p *Parser) AddRaw(source, name string, value []byte) {
	idx := p.next
	p.next++
	if err := credential.ValidateName(name); err != nil {
		var ne *credential.NameError
		detail := err.Error()
		if errors.As(err, &ne) {
			detail, name = ne.Reason, ne.Name
		}
		p.skip(Skip{Index: idx, Source: source, Name: name, Reason: ReasonBadName, Detail: detail})
		return
	}
	p.take(idx, source, "", name, value)
}

// skip records s: counted always, named while fewer than MaxSkipped are.
func (p *Parser) skip(s Skip) {
	p.res.SkippedTotal++
	if p.res.SkippedByReason == nil {
		p.res.SkippedByReason = make(map[Reason]int)
	}
	p.res.SkippedByReason[s.Reason]++
	if len(p.res.Skipped) < MaxSkipped {
		p.res.Skipped = append(p.res.Skipped, s)
	}
}

func (p *Parser) take(idx int, source, prefix, name string, data []byte) {
	skip := func(r Reason, detail string) {
		p.skip(Skip{Index: idx, Source: source, Name: name, Prefix: prefix, Reason: r, Detail: detail})
	}
	// systemd checks the size budget first (credential_size_ok), then writes
	// with O_EXCL, so a duplicate is refused only after its size is checked,
	// and never counts against the budget.
	switch {
	case len(data) > credential.MaxSize:
		skip(ReasonTooLarge, fmt.Sprintf("%d bytes", len(data)))
		return
	case len(data) > credential.MaxTotalSize-p.res.Total:
		skip(ReasonTotalTooLarge, fmt.Sprintf("%d bytes with %d already taken", len(data), p.res.Total))
		return
	}
	if p.seen[name] {
		skip(ReasonDuplicate, "")
		return
	}
	p.seen[name] = true
	p.res.Total += len(data)
	p.res.Entries = append(p.res.Entries, Entry{Name: name, Value: credential.NewSecret(data), Prefix: prefix, Source: source, Index: idx})
}

// DecodeBase64 decodes s as systemd's unbase64mem does: whitespace (space,
// tab, CR, LF) is skipped anywhere, padding is required, non-zero pad bits
// and data after the padding are rejected, and the URL-safe '-' and '_' are
// accepted in place of '+' and '/'. Empty input is an empty value.
//
// Errors give the offset in the whitespace-free text, never the text.
func DecodeBase64(s string) ([]byte, error) {
	// What vmcred and systemd-vmspawn emit is plain padded standard
	// base64: decode it in place, without building a cleaned copy.
	if isStdBase64(s) {
		if b, err := base64.StdEncoding.Strict().DecodeString(s); err == nil {
			return b, nil
		}
	}
	return decodeCleaned(s)
}

// decodeCleaned is DecodeBase64's general path: drop whitespace, map the
// URL-safe alphabet to the standard one, then decode strictly.
func decodeCleaned(s string) ([]byte, error) {
	clean := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r':
			return -1
		case '-':
			return '+'
		case '_':
			return '/'
		}
		return r
	}, s)
	b, err := base64.StdEncoding.Strict().DecodeString(clean)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("corrupt base64 at offset %d of %d", int64(ce), len(clean))
		}
		return nil, errors.New("corrupt base64")
	}
	return b, nil
}

// isStdBase64 reports whether s holds only the standard alphabet and '=',
// so that DecodeBase64's clean-up would leave it unchanged. Errors are
// left to the slow path, which words them.
func isStdBase64(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

// ErrPrefix is returned by Format for a prefix it does not emit.
var ErrPrefix = errors.New("format only emits base64 prefixes")

// Format encodes one credential as an OEM string: prefix (PrefixBinary or
// PrefixVmcred), the name, '=', and the value in standard padded base64.
// Binary encoding avoids every escaping hazard (QEMU's ',,', cloud-hypervisor
// dropping '[', ']' and '"') and is what systemd-vmspawn emits. The result
// is never empty, which go-smbios and the SMBIOS spec could not represent.
// It returns a Secret because the string carries the value.
func Format(prefix, name string, value credential.Secret) (credential.Secret, error) {
	if prefix != PrefixBinary && prefix != PrefixVmcred {
		return credential.Secret{}, fmt.Errorf("format credential %q with prefix %q: %w", name, prefix, ErrPrefix)
	}
	if err := credential.ValidateName(name); err != nil {
		return credential.Secret{}, fmt.Errorf("format credential: %w", err)
	}
	raw := value.Reveal()
	out := make([]byte, 0, FormattedLen(prefix, name, len(raw)))
	out = append(out, prefix...)
	out = append(out, name...)
	out = append(out, '=')
	out = base64.StdEncoding.AppendEncode(out, raw)
	return credential.NewSecret(out), nil
}

// FormattedLen is the length of Format's result for a value of n bytes,
// without its NUL terminator in a table.
func FormattedLen(prefix, name string, n int) int {
	return len(prefix) + len(name) + 1 + base64.StdEncoding.EncodedLen(n)
}
