package smbios

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// oemEntry is the raw file dmi-sysfs shows for one type-11 structure.
func oemEntry(handle uint16, strs ...string) []byte {
	return AppendStructure(nil, TypeOEMStrings, handle, []byte{uint8(len(strs))}, strs)
}

func file(b []byte) *fstest.MapFile { return &fstest.MapFile{Data: b} }

func TestReadEntries(t *testing.T) {
	big := "io.systemd.credential:big=" + strings.Repeat("y", 16*1024)
	tests := []struct {
		name string
		fsys fstest.MapFS
		want [][]string
	}{
		{name: "no entries", fsys: fstest.MapFS{}},
		{
			name: "other types only",
			fsys: fstest.MapFS{"1-0/raw": file(AppendStructure(nil, 1, 0x100, []byte{1, 2, 3, 0}, []string{"QEMU"}))},
		},
		{
			name: "one entry",
			fsys: fstest.MapFS{"11-0/raw": file(oemEntry(0x0e00, "a=1", "b=2"))},
			want: [][]string{{"a=1", "b=2"}},
		},
		{
			name: "two entries",
			fsys: fstest.MapFS{
				"11-0/raw": file(oemEntry(0x0e00, "a=1")),
				"11-1/raw": file(oemEntry(0x0e01, "b=2", "c=3")),
			},
			want: [][]string{{"a=1"}, {"b=2", "c=3"}},
		},
		{
			name: "gap stops the walk",
			fsys: fstest.MapFS{
				"11-0/raw": file(oemEntry(0x0e00, "a=1")),
				"11-2/raw": file(oemEntry(0x0e02, "c=3")),
			},
			want: [][]string{{"a=1"}},
		},
		{
			name: "directory without raw stops the walk",
			fsys: fstest.MapFS{
				"11-0/raw":    file(oemEntry(0x0e00, "a=1")),
				"11-1/handle": file([]byte("3585\n")),
			},
			want: [][]string{{"a=1"}},
		},
		{
			name: "empty string set",
			fsys: fstest.MapFS{"11-0/raw": file(oemEntry(0x0e00))},
			want: [][]string{nil},
		},
		{
			name: "300 strings, count byte 44",
			fsys: fstest.MapFS{"11-0/raw": file(AppendStructure(nil, 11, 0x0e00, []byte{44}, oemStrings(300, 40)))},
			want: [][]string{oemStrings(300, 40)},
		},
		{
			name: "16 KiB string, beyond one page",
			fsys: fstest.MapFS{"11-0/raw": file(oemEntry(0x0e00, big))},
			want: [][]string{{big}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadEntriesOEMStrings(tt.fsys)
			if err != nil {
				t.Fatalf("ReadEntriesOEMStrings: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("strings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadEntriesStructure(t *testing.T) {
	fsys := fstest.MapFS{"11-0/raw": file(oemEntry(0x0e00, "a=1"))}
	want := []Structure{{Type: 11, Length: 5, Handle: 0x0e00, Formatted: []byte{1}, Strings: []string{"a=1"}}}
	got, err := ReadEntries(fsys)
	if err != nil {
		t.Fatalf("ReadEntries: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("structures (-want +got):\n%s", diff)
	}
}

func TestReadEntriesFaults(t *testing.T) {
	good := oemEntry(0x0e00, "a=1")
	tests := []struct {
		name    string
		second  []byte // contents of 11-1/raw; 11-0/raw is good
		wantErr error
		wantMsg string
	}{
		{
			name:    "not type 11",
			second:  AppendStructure(nil, 4, 0x0400, []byte{1}, []string{"CPU 0"}),
			wantErr: ErrNotOEM,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 0 (0x0): type is 4, want 11",
		},
		{
			name:    "end of table",
			second:  AppendStructure(nil, 127, 0x7f00, nil, nil),
			wantErr: ErrNotOEM,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 0 (0x0): type is 127, want 11",
		},
		{
			name:    "type 11 with length 6",
			second:  AppendStructure(nil, 11, 0x0e01, []byte{1, 0}, []string{"b=2"}),
			wantErr: ErrBadOEMLength,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 1 (0x1): type 11 header length is 6, want 5",
		},
		{
			name:    "type 11 with length 4",
			second:  AppendStructure(nil, 11, 0x0e01, nil, []string{"b=2"}),
			wantErr: ErrBadOEMLength,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 1 (0x1): type 11 header length is 4, want 5",
		},
		{
			name:    "empty file",
			second:  []byte{},
			wantErr: ErrTruncated,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 0 (0x0): 0 bytes left, too few for a 4-byte header",
		},
		{
			name:    "header only",
			second:  []byte{11, 5, 1, 0x0e},
			wantErr: ErrTruncated,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 0 (0x0): type 11 formatted area needs 5 bytes, 4 left",
		},
		{
			// systemd ≤ 256 would import the cut string silently.
			name:    "string cut off",
			second:  oemEntry(0x0e01, "io.systemd.credential:x=abcdef")[:20],
			wantErr: ErrTruncated,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 5 (0x5): type 11 string set has no double NUL before the end of the data (15 bytes)",
		},
		{
			name:    "starts with an empty string",
			second:  []byte{11, 5, 1, 0x0e, 1, 0, 'b', 0, 0},
			wantErr: ErrEmptyString,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 5 (0x5): type 11 string set starts with an empty string",
		},
		{
			name:    "end of table after the structure",
			second:  AppendStructure(oemEntry(0x0e01, "b=2"), 127, 0x7f00, nil, nil),
			wantErr: ErrTrailingData,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 10 (0xa): 6 bytes after the structure's double NUL",
		},
		{
			name:    "one byte after the structure",
			second:  append(oemEntry(0x0e01, "b=2"), 0),
			wantErr: ErrTrailingData,
			wantMsg: "smbios entry 11-1/raw: structure 1 at offset 10 (0xa): 1 bytes after the structure's double NUL",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{
				"11-0/raw": file(good),
				"11-1/raw": file(tt.second),
				"11-2/raw": file(oemEntry(0x0e02, "c=3")),
			}
			got, err := ReadEntriesOEMStrings(fsys)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != "11-1/raw" {
				t.Errorf("error %#v, want a *FormatError naming 11-1/raw", err)
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

// errFS fails every Open with openErr, or opens every file and fails
// every Read with readErr.
type errFS struct{ openErr, readErr error }

func (f errFS) Open(name string) (fs.File, error) {
	if f.openErr != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: f.openErr}
	}
	return errFile{f.readErr}, nil
}

type errFile struct{ err error }

func (f errFile) Stat() (fs.FileInfo, error) { return nil, f.err }
func (f errFile) Read([]byte) (int, error)   { return 0, f.err }
func (f errFile) Close() error               { return nil }

func TestReadEntriesReadErrors(t *testing.T) {
	eio := errors.New("input/output error")
	tests := []struct {
		name    string
		fsys    fs.FS
		wantErr error
		wantMsg string
	}{
		{
			name:    "read fails",
			fsys:    errFS{readErr: eio},
			wantErr: eio,
			wantMsg: "read smbios entry 11-0/raw: input/output error",
		},
		{
			name:    "permission denied",
			fsys:    errFS{openErr: fs.ErrPermission},
			wantErr: fs.ErrPermission,
			wantMsg: "open smbios entry 11-0/raw: open 11-0/raw: permission denied",
		},
		{
			name:    "raw is a directory",
			fsys:    fstest.MapFS{"11-0/raw/x": file(nil)},
			wantMsg: "read smbios entry 11-0/raw: read 11-0/raw: invalid argument",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadEntries(tt.fsys)
			if err == nil {
				t.Fatal("ReadEntries gave no error")
			}
			if len(got) != 0 {
				t.Errorf("%d structures, want none", len(got))
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want it to wrap %v", err, tt.wantErr)
			}
			if errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v wraps fs.ErrNotExist; a read error must not look like the end of the walk", err)
			}
			if err.Error() != tt.wantMsg {
				t.Errorf("message\n%s\nwant\n%s", err, tt.wantMsg)
			}
		})
	}
}

func TestReadEntriesTooLarge(t *testing.T) {
	huge := oemEntry(0x0e00, "a="+strings.Repeat("z", MaxEntrySize))
	fsys := fstest.MapFS{"11-0/raw": file(oemEntry(0x0e00, "a=1")), "11-1/raw": file(huge)}
	got, err := ReadEntries(fsys)
	if !errors.Is(err, ErrEntryTooLarge) {
		t.Fatalf("error %v, want ErrEntryTooLarge", err)
	}
	const msg = "smbios entry 11-1/raw: structure 1 at offset 16777216 (0x1000000): file is over the 16777216-byte limit"
	if err.Error() != msg {
		t.Errorf("message\n%s\nwant\n%s", err, msg)
	}
	if len(got) != 1 {
		t.Errorf("%d structures before the fault, want 1", len(got))
	}
}

func TestReadEntriesTooMany(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 65537 entry files")
	}
	entry := oemEntry(0x0e00, "a=1")
	fsys := fstest.MapFS{}
	for i := 0; i < MaxEntries; i++ {
		fsys[fmt.Sprintf("11-%d/raw", i)] = file(entry)
	}
	got, err := ReadEntries(fsys)
	if err != nil || len(got) != MaxEntries {
		t.Fatalf("ReadEntries with %d entries: %d structures, error %v; want all and no error", MaxEntries, len(got), err)
	}
	fsys[fmt.Sprintf("11-%d/raw", MaxEntries)] = file(entry)
	got, err = ReadEntries(fsys)
	if !errors.Is(err, ErrTooManyEntries) {
		t.Fatalf("error %v, want ErrTooManyEntries", err)
	}
	const msg = "smbios entry 11-65536/raw: structure 65536 at offset 0 (0x0): entry files go on past the limit of 65536"
	if err.Error() != msg {
		t.Errorf("message\n%s\nwant\n%s", err, msg)
	}
	if len(got) != MaxEntries {
		t.Errorf("%d structures before the fault, want %d", len(got), MaxEntries)
	}
}
