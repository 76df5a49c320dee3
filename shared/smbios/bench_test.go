package smbios

import "testing"

// benchTable is one type-11 structure of 255 strings of 235 bytes, about
// 60 KiB: close to the 32-bit entry point's 65535-byte limit.
func benchTable(b *testing.B) []byte {
	table, err := BuildQEMUTable(oemStrings(255, 235))
	if err != nil {
		b.Fatal(err)
	}
	return table
}

func BenchmarkReadTable(b *testing.B) {
	table := benchTable(b)
	b.SetBytes(int64(len(table)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadTable(table); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadTablePlatform(b *testing.B) {
	table := realisticTable()
	b.SetBytes(int64(len(table)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadTable(table); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildQEMUTable(b *testing.B) {
	strs := oemStrings(255, 235)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BuildQEMUTable(strs); err != nil {
			b.Fatal(err)
		}
	}
}
