package smbios

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestReadTableRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		oem  [][]string
		opts BuildOptions
	}{
		{name: "one string", oem: [][]string{{"io.systemd.credential:foo=bar"}}},
		{name: "255 strings", oem: [][]string{oemStrings(255, 200)}},
		{name: "15 KB string", oem: [][]string{{"io.systemd.credential:big=" + strings.Repeat("x", 15*1024)}}},
		{name: "two structures", oem: [][]string{{"a=1", "b=2"}, {"c=3"}}},
		{name: "empty structure", oem: [][]string{{"a=1"}, {}, {"c=3"}}},
		{name: "no structures", oem: nil},
		{name: "realistic with platform", oem: [][]string{realisticStrings()}, opts: BuildOptions{Platform: true}},
		{name: "control and high bytes", oem: [][]string{{"\xff\xfe\x01\n\t", " x "}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := BuildTable(tt.oem, tt.opts)
			if err != nil {
				t.Fatalf("BuildTable: %v", err)
			}
			got, err := ReadTableOEMStrings(table)
			if err != nil {
				t.Fatalf("ReadTableOEMStrings: %v", err)
			}
			if diff := cmp.Diff(tt.oem, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("strings (-want +got):\n%s", diff)
			}
			structs, err := ReadTable(table)
			if err != nil {
				t.Fatalf("ReadTable: %v", err)
			}
			for _, o := range OEMStructures(structs) {
				if err := o.CountMismatch(); err != nil {
					t.Errorf("built table has a count mismatch: %v", err)
				}
			}
			last := structs[len(structs)-1]
			if last.Type != TypeEndOfTable || last.Handle != HandleEndOfTable {
				t.Errorf("last structure is type %d handle 0x%04x, want type 127 handle 0x7f00", last.Type, last.Handle)
			}
		})
	}
}

func TestReadTableStructures(t *testing.T) {
	table := mustBuild([][]string{{"a=1", "bb=2"}, {"c=3"}}, BuildOptions{Platform: true})
	// Sizes: type 0 is 24 + 42 string bytes + 1 = 67; type 1 is
	// 27 + 47 + 1 = 75; the type-11 structures 5 + 9 + 1 = 15 and
	// 5 + 4 + 1 = 10; type 127 is 6.
	want := []Structure{
		{Type: 0, Length: 24, Handle: 0x0000, Formatted: biosFormatted(), Strings: biosStrings(), Offset: 0},
		{Type: 1, Length: 27, Handle: 0x0100, Formatted: systemFormatted(), Strings: systemStrings(), Offset: 67},
		{Type: 11, Length: 5, Handle: 0x0E00, Formatted: []byte{2}, Strings: []string{"a=1", "bb=2"}, Offset: 142},
		{Type: 11, Length: 5, Handle: 0x0E01, Formatted: []byte{1}, Strings: []string{"c=3"}, Offset: 157},
		{Type: 127, Length: 4, Handle: 0x7F00, Offset: 167},
	}
	got, err := ReadTable(table)
	if err != nil {
		t.Fatalf("ReadTable: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("structures (-want +got):\n%s", diff)
	}
	if len(table) != 173 {
		t.Errorf("table is %d bytes, want 173", len(table))
	}
}

func TestReadTable300Strings(t *testing.T) {
	want := oemStrings(300, 40)
	got, err := ReadTableOEMStrings(table300())
	if err != nil {
		t.Fatalf("ReadTableOEMStrings: %v", err)
	}
	if diff := cmp.Diff([][]string{want}, got); diff != "" {
		t.Errorf("strings (-want +got):\n%s", diff)
	}

	structs, err := ReadTable(table300())
	if err != nil {
		t.Fatalf("ReadTable: %v", err)
	}
	oem := OEMStructures(structs)
	if len(oem) != 1 {
		t.Fatalf("%d type 11 structures, want 1", len(oem))
	}
	if oem[0].Count != 44 {
		t.Errorf("count byte %d, want 44 (300 wrapped)", oem[0].Count)
	}
	err = oem[0].CountMismatch()
	if !errors.Is(err, ErrCountMismatch) {
		t.Fatalf("CountMismatch() = %v, want ErrCountMismatch", err)
	}
	const msg = "type 11 structure 0 (handle 0x0e00) at offset 0: count byte 44 but 300 strings: smbios type 11 count byte disagrees with its strings"
	if err.Error() != msg {
		t.Errorf("CountMismatch() =\n%s\nwant\n%s", err, msg)
	}
}

// TestReadTableCutEveryOffset cuts tables at every offset: each cut must
// give an error, never panic, and return exactly the structures that lie
// wholly before the cut, each equal to the uncut one.
func TestReadTableCutEveryOffset(t *testing.T) {
	tables := map[string][]byte{
		"realistic": realisticTable(),
		"300":       table300(),
	}
	for name, table := range tables {
		t.Run(name, func(t *testing.T) {
			full, err := ReadTable(table)
			if err != nil {
				t.Fatalf("ReadTable(full): %v", err)
			}
			ends := make([]int, len(full))
			for i := range full {
				if i+1 < len(full) {
					ends[i] = full[i+1].Offset
				} else {
					ends[i] = len(table)
				}
			}
			for cut := 0; cut < len(table); cut++ {
				got, err := ReadTable(table[:cut])
				complete, boundary := 0, cut == 0
				for _, e := range ends {
					if e <= cut {
						complete++
					}
					boundary = boundary || e == cut
				}
				wantErr := ErrTruncated
				if boundary {
					wantErr = ErrNoEndOfTable
				}
				if !errors.Is(err, wantErr) {
					t.Fatalf("cut %d: error %v, want %v", cut, err, wantErr)
				}
				if diff := cmp.Diff(full[:complete], got, cmpopts.EquateEmpty()); diff != "" {
					t.Fatalf("cut %d: structures (-want +got):\n%s", cut, diff)
				}
			}
		})
	}
}

func TestReadTableFaults(t *testing.T) {
	good := AppendStructure(nil, TypeOEMStrings, HandleOEMBase, []byte{1}, []string{"a=1"})
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	tests := []struct {
		name      string
		data      []byte
		wantErr   error
		wantTypes []uint8 // types of the structures returned with the error
		wantMsg   string
	}{
		{
			name:    "empty",
			data:    nil,
			wantErr: ErrNoEndOfTable,
			wantMsg: "smbios table: structure 0 at offset 0 (0x0): table ends without an end-of-table (type 127) structure",
		},
		{
			name:      "no end of table",
			data:      cat(good, good),
			wantErr:   ErrNoEndOfTable,
			wantTypes: []uint8{11, 11},
			wantMsg:   "smbios table: structure 2 at offset 20 (0x14): table ends without an end-of-table (type 127) structure",
		},
		{
			name:    "header length 0",
			data:    []byte{11, 0, 0, 0x0e, 0, 0, 127, 4, 0, 0x7f, 0, 0},
			wantErr: ErrBadHeaderLength,
			wantMsg: "smbios table: structure 0 at offset 1 (0x1): type 11 header length 0 is below the 4-byte header",
		},
		{
			name:      "header length 3 after a good structure",
			data:      cat(good, []byte{1, 3, 0, 1, 0, 0}),
			wantErr:   ErrBadHeaderLength,
			wantTypes: []uint8{11},
			wantMsg:   "smbios table: structure 1 at offset 11 (0xb): type 1 header length 3 is below the 4-byte header",
		},
		{
			name:      "partial header",
			data:      cat(good, []byte{127, 4, 0}),
			wantErr:   ErrTruncated,
			wantTypes: []uint8{11},
			wantMsg:   "smbios table: structure 1 at offset 10 (0xa): 3 bytes left, too few for a 4-byte header",
		},
		{
			name:    "formatted area past end",
			data:    []byte{1, 27, 0, 1, 1, 2, 3},
			wantErr: ErrTruncated,
			wantMsg: "smbios table: structure 0 at offset 0 (0x0): type 1 formatted area needs 27 bytes, 7 left",
		},
		{
			name:    "string set missing",
			data:    []byte{11, 5, 0, 0x0e, 1},
			wantErr: ErrTruncated,
			wantMsg: "smbios table: structure 0 at offset 5 (0x5): type 11 string set needs at least 2 bytes, 0 left",
		},
		{
			name:    "no double NUL",
			data:    []byte{11, 5, 0, 0x0e, 2, 'a', 0, 'b', 0},
			wantErr: ErrTruncated,
			wantMsg: "smbios table: structure 0 at offset 5 (0x5): type 11 string set has no double NUL before the end of the data (4 bytes)",
		},
		{
			name:    "string set starts with an empty string",
			data:    cat([]byte{11, 5, 0, 0x0e, 2, 0, 'a', 0, 0}, AppendStructure(nil, 127, 0x7f00, nil, nil)),
			wantErr: ErrEmptyString,
			wantMsg: "smbios table: structure 0 at offset 5 (0x5): type 11 string set starts with an empty string",
		},
		{
			// The double NUL after "a" ends the set, as in the kernel's
			// dmi_entry_length; "b" then starts a 3-byte header. Only the
			// true structure (one string "a") comes back.
			name:      "empty string in the middle",
			data:      AppendStructure(nil, 11, 0x0e00, []byte{3}, []string{"a", "", "b"}),
			wantErr:   ErrTruncated,
			wantTypes: []uint8{11},
			wantMsg:   "smbios table: structure 1 at offset 8 (0x8): 3 bytes left, too few for a 4-byte header",
		},
		{
			name:      "end of table truncated",
			data:      cat(good, []byte{127, 4, 0, 0x7f, 0}),
			wantErr:   ErrTruncated,
			wantTypes: []uint8{11},
			wantMsg:   "smbios table: structure 1 at offset 14 (0xe): type 127 string set needs at least 2 bytes, 1 left",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadTable(tt.data)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T, want *FormatError", err)
			}
			if err.Error() != tt.wantMsg {
				t.Errorf("message\n%s\nwant\n%s", err, tt.wantMsg)
			}
			var types []uint8
			for _, s := range got {
				types = append(types, s.Type)
			}
			if diff := cmp.Diff(tt.wantTypes, types); diff != "" {
				t.Errorf("types returned (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadTableMiddleEmptyStringKeepsTrueStrings(t *testing.T) {
	got, err := ReadTable(AppendStructure(nil, 11, 0x0e00, []byte{3}, []string{"a", "", "b"}))
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("error %v, want ErrTruncated", err)
	}
	if diff := cmp.Diff([][]string{{"a"}}, OEMStrings(got)); diff != "" {
		t.Errorf("strings (-want +got):\n%s", diff)
	}
	if err := OEMStructures(got)[0].CountMismatch(); !errors.Is(err, ErrCountMismatch) {
		t.Errorf("CountMismatch() = %v, want ErrCountMismatch (count 3, 1 string)", err)
	}
}

func TestReadTableIgnoresBytesAfterEnd(t *testing.T) {
	table := realisticTable()
	want, err := ReadTable(table)
	if err != nil {
		t.Fatalf("ReadTable: %v", err)
	}
	trailers := map[string][]byte{
		"zero padding":    make([]byte, 4096),
		"garbage":         []byte{0xff, 0x00, 0x03, 0x11},
		"another table":   realisticTable(),
		"bad header 0":    {11, 0, 0, 0},
		"partial header":  {1},
		"second type 127": AppendStructure(nil, 127, 1, nil, nil),
	}
	for name, trailer := range trailers {
		t.Run(name, func(t *testing.T) {
			data := append(append([]byte{}, table...), trailer...)
			got, err := ReadTable(data)
			if err != nil {
				t.Fatalf("ReadTable: %v", err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("structures (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadTableEndOfTableWithContents(t *testing.T) {
	// Type 127 may carry a formatted area and strings; they are read like
	// any structure's, and nothing after them.
	data := AppendStructure(nil, 127, 0x7f00, []byte{9, 9}, []string{"x"})
	data = append(data, 0xde, 0xad)
	want := []Structure{{Type: 127, Length: 6, Handle: 0x7f00, Formatted: []byte{9, 9}, Strings: []string{"x"}}}
	got, err := ReadTable(data)
	if err != nil {
		t.Fatalf("ReadTable: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("structures (-want +got):\n%s", diff)
	}
}

func TestReadTableOEMStringsBadLength(t *testing.T) {
	tests := []struct {
		name    string
		length  []byte // formatted area of the second type-11 structure
		wantMsg string
	}{
		{name: "length 4", length: nil, wantMsg: "smbios table: structure 1 at offset 11 (0xb): type 11 header length is 4, want 5"},
		{name: "length 6", length: []byte{1, 0}, wantMsg: "smbios table: structure 1 at offset 11 (0xb): type 11 header length is 6, want 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendStructure(nil, 11, 0x0e00, []byte{1}, []string{"a=1"})
			b = AppendStructure(b, 11, 0x0e01, tt.length, []string{"b=2"})
			b = AppendStructure(b, 127, 0x7f00, nil, nil)
			got, err := ReadTableOEMStrings(b)
			if !errors.Is(err, ErrBadOEMLength) {
				t.Fatalf("error %v, want ErrBadOEMLength", err)
			}
			if err.Error() != tt.wantMsg {
				t.Errorf("message\n%s\nwant\n%s", err, tt.wantMsg)
			}
			if diff := cmp.Diff([][]string{{"a=1"}}, got); diff != "" {
				t.Errorf("strings before the fault (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadTableOEMStringsPartial(t *testing.T) {
	// A fault after the first type-11 structure still yields its strings.
	table := realisticTable()
	structs, err := ReadTable(table)
	if err != nil {
		t.Fatalf("ReadTable: %v", err)
	}
	second := structs[3].Offset // the second type-11 structure
	got, err := ReadTableOEMStrings(table[:second+6])
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("error %v, want ErrTruncated", err)
	}
	if diff := cmp.Diff([][]string{realisticStrings()}, got); diff != "" {
		t.Errorf("strings (-want +got):\n%s", diff)
	}

	got, err = ReadTableOEMStrings(table[:structs[4].Offset])
	if !errors.Is(err, ErrNoEndOfTable) {
		t.Fatalf("error %v, want ErrNoEndOfTable", err)
	}
	if len(got) != 2 {
		t.Errorf("%d structures of strings with ErrNoEndOfTable, want 2", len(got))
	}
}

func TestOEMCountMismatch(t *testing.T) {
	tests := []struct {
		name    string
		oem     OEM
		wantMsg string // empty: no mismatch
	}{
		{name: "agree", oem: OEM{Count: 2, Strings: []string{"a", "b"}}},
		{name: "agree empty", oem: OEM{Count: 0}},
		{name: "wrapped", oem: OEM{Structure: 3, Offset: 90, Handle: 0x0e01, Count: 0, Strings: make([]string, 256)},
			wantMsg: "type 11 structure 3 (handle 0x0e01) at offset 90: count byte 0 but 256 strings: smbios type 11 count byte disagrees with its strings"},
		{name: "no count byte", oem: OEM{Count: -1, Strings: []string{"a"}},
			wantMsg: "type 11 structure 0 (handle 0x0000) at offset 0: no count byte but 1 strings: smbios type 11 count byte disagrees with its strings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.oem.CountMismatch()
			if tt.wantMsg == "" {
				if err != nil {
					t.Fatalf("CountMismatch() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrCountMismatch) || err.Error() != tt.wantMsg {
				t.Errorf("CountMismatch() =\n%v\nwant\n%s", err, tt.wantMsg)
			}
		})
	}
}

func TestOEMStructures(t *testing.T) {
	structs := []Structure{
		{Type: 1, Strings: []string{"QEMU"}},
		{Type: 11, Length: 5, Handle: 0x0e00, Formatted: []byte{2}, Strings: []string{"a", "b"}, Offset: 40},
		{Type: 11, Length: 4, Handle: 0x0e01, Strings: []string{"c"}, Offset: 52},
		{Type: 127, Length: 4, Handle: 0x7f00, Offset: 60},
	}
	want := []OEM{
		{Structure: 1, Offset: 40, Handle: 0x0e00, Count: 2, Strings: []string{"a", "b"}},
		{Structure: 2, Offset: 52, Handle: 0x0e01, Count: -1, Strings: []string{"c"}},
	}
	if diff := cmp.Diff(want, OEMStructures(structs)); diff != "" {
		t.Errorf("OEMStructures (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([][]string{{"a", "b"}, {"c"}}, OEMStrings(structs)); diff != "" {
		t.Errorf("OEMStrings (-want +got):\n%s", diff)
	}
}
