// Package smbios reads and writes SMBIOS structure tables as vmcred needs
// them: the guest reads type-11 (OEM strings) structures from the
// /sys/firmware/dmi/tables/DMI table or the /sys/firmware/dmi/entries/11-N/raw
// files, and the host and the tests build tables laid out as QEMU lays them
// out.
//
// Decoding of each structure is done by github.com/digitalocean/go-smbios;
// this package adds what go-smbios lacks (see shared/reference/go-deps.md §2):
// it finds every structure boundary itself with a bounds check at each
// offset, returns the structures read before a fault together with the
// fault, accepts a table without an end-of-table structure (with
// ErrNoEndOfTable), never trusts the type-11 count byte, and checks type-11
// structures the way systemd does.
//
// The package is OS-free (bytes and fs.FS in, values out; no os, syscall or
// net) and may be imported by any vmcred package, host or guest.
package smbios

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	gosmbios "github.com/digitalocean/go-smbios/smbios"
)

// Structure types and sizes this package knows about.
const (
	// TypeOEMStrings is SMBIOS type 11, OEM Strings.
	TypeOEMStrings uint8 = 11
	// TypeEndOfTable is SMBIOS type 127, End-of-Table.
	TypeEndOfTable uint8 = 127
	// HeaderLen is the size of a structure header: type u8, length u8,
	// handle u16 little-endian.
	HeaderLen = 4
	// OEMLength is the only header length systemd accepts for a type-11
	// structure: the header plus the count byte (read_smbios11_field
	// returns -EBADMSG otherwise).
	OEMLength = 5
)

// Sentinel errors. Every fault is a *FormatError wrapping one of these, so
// callers test with errors.Is.
var (
	// ErrTruncated means the data ends inside a structure.
	ErrTruncated = errors.New("smbios structure truncated")
	// ErrBadHeaderLength means a header's length byte is below 4, the size
	// of the header itself.
	ErrBadHeaderLength = errors.New("smbios header length below 4")
	// ErrEmptyString means a string set holds an empty string, which SMBIOS
	// cannot represent (the double NUL ends the set). The writer returns it
	// for an empty input string; the reader for a set that starts with a
	// single NUL.
	ErrEmptyString = errors.New("empty smbios string")
	// ErrNoEndOfTable means the table ended cleanly at a structure boundary
	// without an end-of-table (type 127) structure. All structures are
	// returned with it; callers may treat it as a warning, since Linux
	// 6.6.39 and later can cut the sysfs DMI file before type 127.
	ErrNoEndOfTable = errors.New("smbios table has no end-of-table structure")
	// ErrNotOEM means an entry file does not hold a type-11 structure.
	ErrNotOEM = errors.New("not an smbios type 11 structure")
	// ErrBadOEMLength means a type-11 structure's header length is not 5,
	// which systemd rejects with -EBADMSG.
	ErrBadOEMLength = errors.New("smbios type 11 header length is not 5")
	// ErrTrailingData means an entry file holds bytes after its one
	// structure.
	ErrTrailingData = errors.New("data after smbios structure")
	// ErrDecode means go-smbios decoded a structure differently from the
	// boundaries found by this package. It indicates a bug, not bad input.
	ErrDecode = errors.New("smbios structure decode mismatch")
)

// FormatError reports a fault in SMBIOS data: where it is and why. It
// never holds string contents, which may be secrets.
type FormatError struct {
	// File is the entry file the fault is in, relative to the fs.FS given
	// to ReadEntries (for example "11-1/raw"); empty for a table.
	File string
	// Offset is the byte offset of the fault in the table or file.
	Offset int
	// Structure is the index of the structure being read: its position in
	// the table, or N for the entry file 11-N.
	Structure int
	// Reason says what is wrong, without quoting string contents.
	Reason string
	// Err is the sentinel this error wraps (ErrTruncated, …).
	Err error
}

func (e *FormatError) Error() string {
	where := "smbios table"
	if e.File != "" {
		where = "smbios entry " + e.File
	}
	return fmt.Sprintf("%s: structure %d at offset %d (0x%x): %s", where, e.Structure, e.Offset, e.Offset, e.Reason)
}

// Unwrap returns the sentinel, so errors.Is(err, ErrTruncated) and the
// like work.
func (e *FormatError) Unwrap() error { return e.Err }

// Structure is one decoded SMBIOS structure.
type Structure struct {
	// Type is the structure type (11 for OEM strings, 127 for end of table).
	Type uint8
	// Length is the header's length byte: header plus formatted area.
	Length uint8
	// Handle is the structure's handle.
	Handle uint16
	// Formatted is the formatted area after the 4-byte header (Length-4
	// bytes; for type 11 it is the count byte), nil when empty.
	Formatted []byte
	// Strings holds the string set in order, without NUL terminators; nil
	// when the structure has none. For type 11 it is read to the double
	// NUL, whatever the count byte says.
	Strings []string
	// Offset is where the structure starts in the table; 0 for an entry
	// file.
	Offset int
}

// endOfTable is a type-127 structure (handle 0xfeff) appended after a
// single structure so that go-smbios, which reads until type 127, stops
// cleanly. A constant string keeps it immutable.
const endOfTable = "\x7f\x04\xff\xfe\x00\x00"

// ReadTable reads a table in the format of /sys/firmware/dmi/tables/DMI:
// structures only, no entry point, normally ending with a type-127
// structure, which is returned as the last element. Bytes after type 127 are
// ignored, since the sysfs file is sized to the entry point's maximum.
//
// On a fault ReadTable returns every complete structure before it and a
// *FormatError; a partial structure is never returned. Data that ends
// cleanly at a structure boundary without type 127 gives all structures and
// an error wrapping ErrNoEndOfTable.
func ReadTable(data []byte) ([]Structure, error) {
	var out []Structure
	off := 0
	for {
		if off == len(data) {
			return out, &FormatError{
				Offset: off, Structure: len(out), Err: ErrNoEndOfTable,
				Reason: "table ends without an end-of-table (type 127) structure",
			}
		}
		s, n, err := readStructure(data[off:], off, len(out), true)
		if err != nil {
			return out, err
		}
		out = append(out, s)
		off += n
		if s.Type == TypeEndOfTable {
			return out, nil
		}
	}
}

// ScanTable reads a table as ReadTable does, but keeps nothing: it calls
// fn with each structure in turn, and decodes (with go-smbios: formatted
// area and strings) only structures of type want; the others come with
// their header fields and offset only. fn returning false stops the scan
// (ScanTable then returns nil). Otherwise it returns what ReadTable would:
// nil at type 127, or the fault, or ErrNoEndOfTable.
//
// Memory stays bounded by the largest structure rather than by the number
// of structures: a hostile 1 MiB table of 166,000 empty structures costs
// ReadTable a slice of them all, and ScanTable nothing.
func ScanTable(data []byte, want uint8, fn func(index int, s Structure) bool) error {
	off := 0
	for index := 0; ; index++ {
		if off == len(data) {
			return &FormatError{
				Offset: off, Structure: index, Err: ErrNoEndOfTable,
				Reason: "table ends without an end-of-table (type 127) structure",
			}
		}
		typ := data[off]
		s, n, err := readStructure(data[off:], off, index, typ == want)
		if err != nil {
			return err
		}
		if !fn(index, s) {
			return nil
		}
		off += n
		if s.Type == TypeEndOfTable {
			return nil
		}
	}
}

// readStructure finds the structure at the start of b (which starts at
// offset base of the table and is structure number index) and returns it
// with its size in bytes; decode has go-smbios decode it, otherwise only
// its header fields and offset are set.
func readStructure(b []byte, base, index int, decode bool) (Structure, int, error) {
	fault := func(at int, sentinel error, format string, args ...any) (Structure, int, error) {
		return Structure{}, 0, &FormatError{
			Offset: base + at, Structure: index, Err: sentinel,
			Reason: fmt.Sprintf(format, args...),
		}
	}
	if len(b) < HeaderLen {
		return fault(0, ErrTruncated, "%d bytes left, too few for a %d-byte header", len(b), HeaderLen)
	}
	typ, length, handle := b[0], int(b[1]), binary.LittleEndian.Uint16(b[2:4])
	if length < HeaderLen {
		return fault(1, ErrBadHeaderLength, "type %d header length %d is below the %d-byte header", typ, length, HeaderLen)
	}
	if len(b) < length {
		return fault(0, ErrTruncated, "type %d formatted area needs %d bytes, %d left", typ, length, len(b))
	}
	// The string set runs from the end of the formatted area to the first
	// double NUL, as the kernel's dmi_entry_length finds it. Every offset
	// below is checked against len(b) before use.
	set := b[length:]
	var end int // size of the structure, double NUL included
	switch {
	case len(set) < 2:
		return fault(length, ErrTruncated, "type %d string set needs at least 2 bytes, %d left", typ, len(set))
	case set[0] == 0 && set[1] == 0:
		end = length + 2
	case set[0] == 0:
		return fault(length, ErrEmptyString, "type %d string set starts with an empty string", typ)
	default:
		i := bytes.Index(set, []byte{0, 0})
		if i < 0 {
			return fault(length, ErrTruncated, "type %d string set has no double NUL before the end of the data (%d bytes)", typ, len(set))
		}
		end = length + i + 2
	}
	raw := b[:end]
	if !decode {
		return Structure{Type: typ, Length: uint8(length), Handle: handle, Offset: base}, end, nil
	}

	// Let go-smbios decode exactly this structure. It reads until type 127,
	// so every other type gets a terminator after it.
	r := io.Reader(bytes.NewReader(raw))
	want := 2
	if typ == TypeEndOfTable {
		want = 1
	} else {
		r = io.MultiReader(r, strings.NewReader(endOfTable))
	}
	ds, err := gosmbios.NewDecoder(r).Decode()
	if err != nil {
		return fault(0, ErrDecode, "type %d: go-smbios: %v", typ, err)
	}
	if len(ds) != want {
		return fault(0, ErrDecode, "type %d: go-smbios found %d structures, want %d", typ, len(ds), want)
	}
	d := ds[0]
	s := Structure{
		Type:      d.Header.Type,
		Length:    d.Header.Length,
		Handle:    d.Header.Handle,
		Formatted: d.Formatted,
		Strings:   d.Strings,
		Offset:    base,
	}
	// Cross-check go-smbios against the boundaries found above, so a
	// disagreement can never yield a wrong string.
	if s.Type != typ || int(s.Length) != length || s.Handle != handle ||
		len(s.Formatted) != length-HeaderLen || encodedSize(s.Formatted, s.Strings) != end {
		return fault(0, ErrDecode, "type %d: go-smbios decoded a %d-byte structure differently", typ, end)
	}
	return s, end, nil
}

// encodedSize is the size AppendStructure gives a structure.
func encodedSize(formatted []byte, strs []string) int {
	n := HeaderLen + len(formatted)
	if len(strs) == 0 {
		return n + 2
	}
	for _, s := range strs {
		n += len(s) + 1
	}
	return n + 1
}
