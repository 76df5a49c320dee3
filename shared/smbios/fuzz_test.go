package smbios

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// reencode lays structs out again with AppendStructure.
func reencode(structs []Structure) []byte {
	var b []byte
	for _, s := range structs {
		b = AppendStructure(b, s.Type, s.Handle, s.Formatted, s.Strings)
	}
	return b
}

func addTestdataSeeds(f *testing.F, pattern string) {
	paths, err := filepath.Glob(filepath.Join("testdata", pattern))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seeds match testdata/%s: %v", pattern, err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzReadTable checks that ReadTable never panics, that every fault is a
// *FormatError, and a round trip: the structures returned, laid out again
// with AppendStructure, are exactly the bytes they were read from and read
// back the same.
func FuzzReadTable(f *testing.F) {
	addTestdataSeeds(f, "*.dmi")
	f.Add([]byte{})
	f.Add([]byte{11, 0, 0, 0, 0, 0})
	f.Add([]byte{11, 5, 0, 0x0e, 2, 0, 'a', 0, 0})
	f.Add(AppendStructure(nil, 11, 0x0e00, []byte{3}, []string{"a", "", "b"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		structs, err := ReadTable(data)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %v is not a *FormatError", err, err)
			}
			if errors.Is(err, ErrDecode) {
				t.Fatalf("go-smbios disagrees with the boundaries found: %v", err)
			}
			if fe.Structure != len(structs) {
				t.Fatalf("error names structure %d, but %d came back before it", fe.Structure, len(structs))
			}
		}
		for i, s := range structs {
			if (s.Type == TypeEndOfTable) != (i == len(structs)-1 && err == nil) {
				t.Fatalf("structure %d of %d is type %d with error %v", i, len(structs), s.Type, err)
			}
		}
		re := reencode(structs)
		if len(re) > len(data) || !bytes.Equal(re, data[:len(re)]) {
			t.Fatalf("re-encoded structures (%d bytes) are not a prefix of the input (%d bytes)", len(re), len(data))
		}
		again, err2 := ReadTable(re)
		if diff := cmp.Diff(structs, again); diff != "" {
			t.Fatalf("re-read structures (-first +again):\n%s", diff)
		}
		if (err == nil) != (err2 == nil) || (err2 != nil && !errors.Is(err2, ErrNoEndOfTable)) {
			t.Fatalf("first read: %v; re-read: %v", err, err2)
		}
		oem, oemErr := ReadTableOEMStrings(data)
		all := OEMStrings(structs)
		if len(oem) > len(all) || (err != nil && oemErr == nil) {
			t.Fatalf("ReadTableOEMStrings: %d structures, error %v; ReadTable: %d, error %v", len(oem), oemErr, len(all), err)
		}
		if diff := cmp.Diff(all[:len(oem)], oem, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("ReadTableOEMStrings (-ReadTable +got):\n%s", diff)
		}
	})
}

// FuzzReadEntries checks ReadEntries on two entry files: no panic, both
// returned exactly when there is no error, and each structure returned
// re-encodes to exactly its file.
func FuzzReadEntries(f *testing.F) {
	seed := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "entries", name, "raw"))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed("11-0"), seed("11-1"))
	f.Add(seed("11-1"), seed("1-0"))
	f.Add(seed("11-0"), seed("127-0"))
	f.Add([]byte{11, 5, 0, 0x0e, 0, 0, 0}, []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		files := [][]byte{a, b}
		fsys := fstest.MapFS{"11-0/raw": {Data: a}, "11-1/raw": {Data: b}}
		structs, err := ReadEntries(fsys)
		if (err == nil) != (len(structs) == 2) {
			t.Fatalf("%d structures with error %v", len(structs), err)
		}
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File == "" || fe.Structure != len(structs) {
				t.Fatalf("error %#v is not a *FormatError naming entry %d's file", err, len(structs))
			}
			if errors.Is(err, ErrDecode) {
				t.Fatalf("go-smbios disagrees with the boundaries found: %v", err)
			}
		}
		for i, s := range structs {
			if s.Type != TypeOEMStrings || s.Length != OEMLength {
				t.Fatalf("entry %d: type %d length %d returned", i, s.Type, s.Length)
			}
			if re := AppendStructure(nil, s.Type, s.Handle, s.Formatted, s.Strings); !bytes.Equal(re, files[i]) {
				t.Fatalf("entry %d re-encodes to %d bytes that differ from its %d-byte file", i, len(re), len(files[i]))
			}
		}
	})
}

// FuzzScanTable checks ScanTable against ReadTable: the same structures
// (type 11 decoded in full, the others by header), in the same order, and
// the same error.
func FuzzScanTable(f *testing.F) {
	addTestdataSeeds(f, "*.dmi")
	f.Add([]byte{})
	f.Add([]byte{200, 4, 1, 0, 0, 0, 11, 5, 0, 0x0e, 1, 'a', 0, 0, 127, 4, 0xff, 0xfe, 0, 0})
	f.Add(AppendStructure(nil, 11, 0x0e00, []byte{3}, []string{"a", "b"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantErr := ReadTable(data)
		var got []Structure
		err := ScanTable(data, TypeOEMStrings, func(i int, s Structure) bool {
			if i != len(got) {
				t.Fatalf("index %d, want %d", i, len(got))
			}
			got = append(got, s)
			return true
		})
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) {
			t.Fatalf("ScanTable error %v, ReadTable error %v", err, wantErr)
		}
		for i := range want {
			if want[i].Type != TypeOEMStrings {
				want[i] = Structure{Type: want[i].Type, Length: want[i].Length, Handle: want[i].Handle, Offset: want[i].Offset}
			}
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("ScanTable and ReadTable disagree (-ReadTable +ScanTable):\n%s", diff)
		}
	})
}
