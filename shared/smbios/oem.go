package smbios

import (
	"errors"
	"fmt"
	"io/fs"
)

// ErrCountMismatch means a type-11 count byte disagrees with the number of
// strings in the structure. It is a diagnostic, not a fault: QEMU stores the
// count in a u8 that wraps past 255, and systemd ignores the count.
var ErrCountMismatch = errors.New("smbios type 11 count byte disagrees with its strings")

// OEM is one type-11 (OEM strings) structure, with what is needed to
// diagnose it.
type OEM struct {
	// Structure is the structure's index in the slice it came from: its
	// place in the table, or N for the entry file 11-N.
	Structure int
	// Offset is where the structure starts in the table (0 for an entry).
	Offset int
	// Handle is the structure's handle.
	Handle uint16
	// Count is the count byte as stored, or -1 when the formatted area is
	// empty (header length 4).
	Count int
	// Strings are the strings read up to the double NUL, in order.
	Strings []string
}

// CountMismatch returns nil when the count byte equals the number of
// strings, and otherwise an error wrapping ErrCountMismatch that names the
// structure and both numbers, e.g. "count byte 44 but 300 strings". Callers
// log it as a warning; the strings themselves are complete either way.
func (o OEM) CountMismatch() error {
	if o.Count == len(o.Strings) {
		return nil
	}
	count := "no count byte"
	if o.Count >= 0 {
		count = fmt.Sprintf("count byte %d", o.Count)
	}
	return fmt.Errorf("type 11 structure %d (handle 0x%04x) at offset %d: %s but %d strings: %w",
		o.Structure, o.Handle, o.Offset, count, len(o.Strings), ErrCountMismatch)
}

// OEMStructures returns the type-11 structures among structs, in order.
// It applies no length check; ReadTableOEMStrings and ReadEntries do.
func OEMStructures(structs []Structure) []OEM {
	var out []OEM
	for i, s := range structs {
		if s.Type != TypeOEMStrings {
			continue
		}
		count := -1
		if len(s.Formatted) > 0 {
			count = int(s.Formatted[0])
		}
		out = append(out, OEM{Structure: i, Offset: s.Offset, Handle: s.Handle, Count: count, Strings: s.Strings})
	}
	return out
}

// OEMStrings returns the strings of each type-11 structure among structs,
// one slice per structure in table order (QEMU puts all its strings in one
// structure; a table may hold several). The count byte is not used.
func OEMStrings(structs []Structure) [][]string {
	var out [][]string
	for _, s := range structs {
		if s.Type == TypeOEMStrings {
			out = append(out, s.Strings)
		}
	}
	return out
}

// ReadTableOEMStrings reads a DMI table (see ReadTable) and returns the
// strings of each type-11 structure. Like systemd it requires every type-11
// structure to have header length 5; one that does not is a fault wrapping
// ErrBadOEMLength.
//
// On a fault it returns the strings of the type-11 structures before it and
// the error. A table without type 127 gives all strings and an error
// wrapping ErrNoEndOfTable, which callers may treat as a warning.
func ReadTableOEMStrings(data []byte) ([][]string, error) {
	structs, err := ReadTable(data)
	var out [][]string
	for i, s := range structs {
		if s.Type != TypeOEMStrings {
			continue
		}
		if s.Length != OEMLength {
			return out, &FormatError{
				Offset: s.Offset + 1, Structure: i, Err: ErrBadOEMLength,
				Reason: fmt.Sprintf("type 11 header length is %d, want %d", s.Length, OEMLength),
			}
		}
		out = append(out, s.Strings)
	}
	return out, err
}

// ReadEntriesOEMStrings reads the entry files as ReadEntries does and
// returns the strings of each, one slice per file, with the same
// partial-result-plus-error contract.
func ReadEntriesOEMStrings(fsys fs.FS) ([][]string, error) {
	structs, err := ReadEntries(fsys)
	return OEMStrings(structs), err
}
