package smbios

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	gosmbios "github.com/digitalocean/go-smbios/smbios"
	"github.com/google/go-cmp/cmp"
)

func TestBuildQEMUTableLayout(t *testing.T) {
	tests := []struct {
		name string
		strs []string
		want []byte
	}{
		{
			name: "two strings",
			strs: []string{"a=1", "b=2"},
			want: []byte{
				11, 5, 0x00, 0x0e, 2, 'a', '=', '1', 0, 'b', '=', '2', 0, 0,
				127, 4, 0x00, 0x7f, 0, 0,
			},
		},
		{
			name: "no strings: no type 11, as QEMU",
			strs: nil,
			want: []byte{127, 4, 0x00, 0x7f, 0, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BuildQEMUTable(tt.strs)
			if err != nil {
				t.Fatalf("BuildQEMUTable: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("bytes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildTableHandles(t *testing.T) {
	table := mustBuild([][]string{{"a"}, {"b"}, {"c"}}, BuildOptions{})
	structs, err := ReadTable(table)
	if err != nil {
		t.Fatalf("ReadTable: %v", err)
	}
	var got []uint16
	for _, s := range structs {
		got = append(got, s.Handle)
	}
	if diff := cmp.Diff([]uint16{0x0e00, 0x0e01, 0x0e02, 0x7f00}, got); diff != "" {
		t.Errorf("handles (-want +got):\n%s", diff)
	}
}

func TestBuildTableLimits(t *testing.T) {
	// One string of n bytes makes a table of 5 + n+1 + 1 + 6 bytes.
	fits := strings.Repeat("x", MaxTableSize-13)
	tests := []struct {
		name    string
		oem     [][]string
		opts    BuildOptions
		wantErr error
		wantMsg string
	}{
		{name: "255 strings", oem: [][]string{oemStrings(255, 40)}},
		{name: "exactly 65535 bytes", oem: [][]string{{fits}}},
		{
			name:    "256 strings",
			oem:     [][]string{oemStrings(256, 40)},
			wantErr: ErrTooManyStrings,
			wantMsg: "type 11 structure 0 has 256 strings, over the limit of 255: too many strings for one smbios structure",
		},
		{
			name:    "256 strings in the second structure",
			oem:     [][]string{{"a"}, oemStrings(256, 40)},
			wantErr: ErrTooManyStrings,
			wantMsg: "type 11 structure 1 has 256 strings, over the limit of 255: too many strings for one smbios structure",
		},
		{
			name:    "65536 bytes",
			oem:     [][]string{{fits + "x"}},
			wantErr: ErrTableTooLarge,
			wantMsg: "table would be 65536 bytes, over the 65535-byte limit of the 32-bit SMBIOS entry point: smbios table too large",
		},
		{
			name:    "platform pushes it over",
			oem:     [][]string{{fits}},
			opts:    BuildOptions{Platform: true},
			wantErr: ErrTableTooLarge,
			wantMsg: "table would be 65677 bytes, over the 65535-byte limit of the 32-bit SMBIOS entry point: smbios table too large",
		},
		{
			name:    "split over structures",
			oem:     [][]string{oemStrings(255, 200), oemStrings(255, 200)},
			wantErr: ErrTableTooLarge,
			wantMsg: "table would be 102528 bytes, over the 65535-byte limit of the 32-bit SMBIOS entry point: smbios table too large",
		},
		{
			name:    "empty string",
			oem:     [][]string{{"a=1", "", "b=2"}},
			wantErr: ErrEmptyString,
			wantMsg: "type 11 structure 0, string 1: empty smbios string",
		},
		{
			name:    "NUL inside a string",
			oem:     [][]string{{"a=1"}, {"b=2", "io.systemd.credential:x=ab\x00cd"}},
			wantErr: ErrNULInString,
			wantMsg: "type 11 structure 1, string 1: byte 26: smbios string contains a NUL byte",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BuildTable(tt.oem, tt.opts)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("BuildTable: %v", err)
				}
				if len(got) > MaxTableSize {
					t.Errorf("table is %d bytes, over %d", len(got), MaxTableSize)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if err.Error() != tt.wantMsg {
				t.Errorf("message\n%s\nwant\n%s", err, tt.wantMsg)
			}
			if got != nil {
				t.Errorf("got %d bytes with the error, want nil", len(got))
			}
		})
	}
}

func TestBuildQEMUTableLimits(t *testing.T) {
	if _, err := BuildQEMUTable(oemStrings(256, 40)); !errors.Is(err, ErrTooManyStrings) {
		t.Errorf("256 strings: error %v, want ErrTooManyStrings", err)
	}
	if _, err := BuildQEMUTable([]string{""}); !errors.Is(err, ErrEmptyString) {
		t.Errorf("empty string: error %v, want ErrEmptyString", err)
	}
}

func TestBuildTableSizeIsExact(t *testing.T) {
	// BuildTable computes the size before laying out; the two must agree
	// or the limit check would be wrong.
	for _, oem := range [][][]string{nil, {{}}, {{"a"}}, {realisticStrings(), {"x"}}} {
		for _, opts := range []BuildOptions{{}, {Platform: true}} {
			table := mustBuild(oem, opts)
			if cap(table) != len(table) {
				t.Errorf("%d structures, platform %v: computed size %d, laid out %d bytes", len(oem), opts.Platform, cap(table), len(table))
			}
		}
	}
}

func TestAppendStructure(t *testing.T) {
	tests := []struct {
		name      string
		typ       uint8
		handle    uint16
		formatted []byte
		strs      []string
		want      []byte
	}{
		{name: "no strings", typ: 127, handle: 0x7f00, want: []byte{127, 4, 0x00, 0x7f, 0, 0}},
		{name: "strings", typ: 11, handle: 0x1234, formatted: []byte{2}, strs: []string{"ab", "c"},
			want: []byte{11, 5, 0x34, 0x12, 2, 'a', 'b', 0, 'c', 0, 0}},
		{name: "empty string unchecked", typ: 11, handle: 1, formatted: []byte{1}, strs: []string{""},
			want: []byte{11, 5, 1, 0, 1, 0, 0}},
		{name: "NUL unchecked", typ: 11, handle: 1, formatted: []byte{1}, strs: []string{"a\x00b"},
			want: []byte{11, 5, 1, 0, 1, 'a', 0, 'b', 0, 0}},
		{name: "count byte wraps", typ: 11, handle: 1, formatted: []byte{300 % 256}, strs: nil,
			want: []byte{11, 5, 1, 0, 44, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte{0xaa}
			got := AppendStructure(prefix, tt.typ, tt.handle, tt.formatted, tt.strs)
			if diff := cmp.Diff(append([]byte{0xaa}, tt.want...), got); diff != "" {
				t.Errorf("bytes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAppendStructureWrappedLength(t *testing.T) {
	// 252 formatted bytes wrap the length byte to 0: a malformed table for
	// tests, which the reader must refuse.
	b := AppendStructure(nil, 2, 0x200, make([]byte, 252), []string{"x"})
	if b[1] != 0 {
		t.Fatalf("length byte %d, want 0 (wrapped)", b[1])
	}
	if _, err := ReadTable(b); !errors.Is(err, ErrBadHeaderLength) {
		t.Errorf("ReadTable: error %v, want ErrBadHeaderLength", err)
	}
}

func TestEntryPoint64(t *testing.T) {
	table := realisticTable()
	ep := EntryPoint64(uint32(len(table)), 0xbffff000)
	if len(ep) != 24 {
		t.Fatalf("entry point is %d bytes, want 24", len(ep))
	}
	var sum uint8
	for _, c := range ep {
		sum += c
	}
	if sum != 0 {
		t.Errorf("bytes sum to 0x%02x, want 0", sum)
	}
	parsed, err := gosmbios.ParseEntryPoint(bytes.NewReader(ep))
	if err != nil {
		t.Fatalf("go-smbios ParseEntryPoint: %v", err)
	}
	want := &gosmbios.EntryPoint64Bit{
		Anchor: "_SM3_", Checksum: ep[5], Length: 24, Major: 3, Minor: 0, Revision: 0,
		EntryPointRevision: 1, StructureTableMaxSize: uint32(len(table)), StructureTableAddress: 0xbffff000,
	}
	if diff := cmp.Diff(want, parsed); diff != "" {
		t.Errorf("entry point (-want +got):\n%s", diff)
	}
	addr, size := parsed.Table()
	if addr != 0xbffff000 || size != len(table) {
		t.Errorf("Table() = 0x%x, %d; want 0xbffff000, %d", addr, size, len(table))
	}
}
