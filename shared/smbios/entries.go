package smbios

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
)

// Limits on what ReadEntries reads.
const (
	// MaxEntrySize caps one entry file: 16 MiB, far above systemd's 1 MiB
	// budget for all imported credentials, so only a broken or hostile
	// file reaches it.
	MaxEntrySize = 16 << 20
	// MaxEntries caps the 11-N walk: SMBIOS handles are 16 bits, so no
	// table holds more structures.
	MaxEntries = 1 << 16
)

var (
	// ErrEntryTooLarge means an entry file is larger than MaxEntrySize.
	ErrEntryTooLarge = errors.New("smbios entry file too large")
	// ErrTooManyEntries means the 11-N files go on past MaxEntries.
	ErrTooManyEntries = errors.New("too many smbios entry files")
)

// ReadEntries reads the type-11 structures from the per-entry files of the
// kernel's dmi-sysfs driver, as systemd's read_smbios11_field does: fsys is
// rooted at /sys/firmware/dmi/entries, and 11-0/raw, 11-1/raw, … are read in
// order until the first that does not exist. Each file is read whole (never a
// single 4 KiB read, the systemd ≤ 256 bug) and must hold exactly one
// type-11 structure with header length 5 and no end-of-table structure.
//
// A directory without any 11-N entry gives no structures and no error, as
// for systemd; callers that must tell "no dmi-sysfs" from "no OEM strings"
// can fs.Stat the root themselves.
//
// On a fault ReadEntries returns the structures of the files before it and
// the error: a *FormatError naming the file for bad contents, or the read
// error wrapped with the file name.
func ReadEntries(fsys fs.FS) ([]Structure, error) {
	var out []Structure
	for n := 0; ; n++ {
		name := fmt.Sprintf("11-%d/raw", n)
		if n == MaxEntries {
			if _, err := fs.Stat(fsys, name); errors.Is(err, fs.ErrNotExist) {
				return out, nil
			}
			return out, &FormatError{
				File: name, Structure: n, Err: ErrTooManyEntries,
				Reason: fmt.Sprintf("entry files go on past the limit of %d", MaxEntries),
			}
		}
		b, err := readEntry(fsys, name, n)
		if errors.Is(err, fs.ErrNotExist) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		s, err := parseEntry(b, name, n)
		if err != nil {
			return out, err
		}
		out = append(out, s)
	}
}

// readEntry reads one entry file whole, up to MaxEntrySize bytes.
func readEntry(fsys fs.FS, name string, n int) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("open smbios entry %s: %w", name, err)
	}
	defer f.Close() // read-only: a close error loses nothing
	b, err := io.ReadAll(io.LimitReader(f, MaxEntrySize+1))
	if err != nil {
		return nil, fmt.Errorf("read smbios entry %s: %w", name, err)
	}
	if len(b) > MaxEntrySize {
		return nil, &FormatError{
			File: name, Offset: MaxEntrySize, Structure: n, Err: ErrEntryTooLarge,
			Reason: fmt.Sprintf("file is over the %d-byte limit", MaxEntrySize),
		}
	}
	return b, nil
}

// parseEntry checks and decodes the one structure of entry file name, which
// is entry number n. The header is checked first, in systemd's order
// (type 11, then length 5), then the structure's boundaries.
func parseEntry(b []byte, name string, n int) (Structure, error) {
	fault := func(at int, sentinel error, format string, args ...any) (Structure, error) {
		return Structure{}, &FormatError{
			File: name, Offset: at, Structure: n, Err: sentinel,
			Reason: fmt.Sprintf(format, args...),
		}
	}
	if len(b) >= 1 && b[0] != TypeOEMStrings {
		return fault(0, ErrNotOEM, "type is %d, want %d", b[0], TypeOEMStrings)
	}
	if len(b) >= 2 && b[1] != OEMLength {
		return fault(1, ErrBadOEMLength, "type 11 header length is %d, want %d", b[1], OEMLength)
	}
	s, size, err := readStructure(b, 0, n, true)
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			fe.File = name
		}
		return Structure{}, err
	}
	if size != len(b) {
		return fault(size, ErrTrailingData, "%d bytes after the structure's double NUL", len(b)-size)
	}
	return s, nil
}
