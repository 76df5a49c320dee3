package smbios

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the files in testdata/ from the builders in this test")

// testdataFiles are the committed sample files and how each is made. There
// is no real firmware dump: the machine this was written on has no DMI, so
// they are laid out by this package's writer the way QEMU lays them out.
func testdataFiles() map[string][]byte {
	q35 := realisticTable()
	structs, err := ReadTable(q35)
	if err != nil {
		panic(err)
	}
	files := map[string][]byte{
		// A q35 guest's /sys/firmware/dmi/tables/DMI and smbios_entry_point.
		"qemu-q35.dmi":                q35,
		"qemu-q35.smbios_entry_point": EntryPoint64(uint32(len(q35)), 0xbfff0000),
		// 300 OEM strings in one structure, count byte 44.
		"oem-300.dmi": table300(),
		// A DMI file cut before type 127, as Linux ≥ 6.6.39 may show it.
		"no-end.dmi": q35[:structs[len(structs)-1].Offset],
	}
	// /sys/firmware/dmi/entries for the q35 table: one TYPE-N/raw file per
	// structure, N counting per type.
	perType := map[uint8]int{}
	for i, s := range structs {
		end := len(q35)
		if i+1 < len(structs) {
			end = structs[i+1].Offset
		}
		name := filepath.Join("entries", strconv.Itoa(int(s.Type))+"-"+strconv.Itoa(perType[s.Type]), "raw")
		perType[s.Type]++
		files[name] = q35[s.Offset:end]
	}
	return files
}

func TestTestdataGolden(t *testing.T) {
	for name, want := range testdataFiles() {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update to create it)", err)
		}
		if !bytes.Equal(want, got) {
			t.Errorf("%s differs from what the writer lays out now; run go test -update if that is intended", path)
		}
	}
}

func TestTestdataTables(t *testing.T) {
	want := [][]string{realisticStrings(), {"io.systemd.credential:second=structure"}}
	tests := []struct {
		file    string
		want    [][]string
		wantErr error
	}{
		{file: "qemu-q35.dmi", want: want},
		{file: "no-end.dmi", want: want, wantErr: ErrNoEndOfTable},
		{file: "oem-300.dmi", want: [][]string{oemStrings(300, 40)}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ReadTableOEMStrings(data)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("strings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTestdataEntries(t *testing.T) {
	got, err := ReadEntriesOEMStrings(os.DirFS(filepath.Join("testdata", "entries")))
	if err != nil {
		t.Fatalf("ReadEntriesOEMStrings: %v", err)
	}
	want := [][]string{realisticStrings(), {"io.systemd.credential:second=structure"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("strings (-want +got):\n%s", diff)
	}
}
