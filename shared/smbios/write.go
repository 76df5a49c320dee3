package smbios

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Handles and limits of the tables QEMU builds (hw/smbios/smbios.c).
const (
	// HandleBIOS is QEMU's T0_BASE, the handle of the type-0 structure.
	HandleBIOS uint16 = 0x0000
	// HandleSystem is QEMU's T1_BASE, the handle of the type-1 structure.
	HandleSystem uint16 = 0x0100
	// HandleOEMBase is QEMU's T11_BASE, the handle of its one type-11
	// structure. BuildTable gives structure i the handle HandleOEMBase+i.
	HandleOEMBase uint16 = 0x0E00
	// HandleEndOfTable is QEMU's T127_BASE, the handle of type 127.
	HandleEndOfTable uint16 = 0x7F00
	// MaxStrings is the most strings a type-11 structure can count: the
	// count byte is a u8 (QEMU lets it wrap; BuildTable refuses).
	MaxStrings = 255
	// MaxTableSize is the largest table the 32-bit (SMBIOS 2.1) entry point
	// can describe: its table length is a u16, and QEMU's
	// smbios_validate_table refuses a longer table.
	MaxTableSize = 0xFFFF
)

var (
	// ErrTooManyStrings means a type-11 structure would hold more than
	// MaxStrings strings.
	ErrTooManyStrings = errors.New("too many strings for one smbios structure")
	// ErrTableTooLarge means the table would be over MaxTableSize bytes.
	ErrTableTooLarge = errors.New("smbios table too large")
	// ErrNULInString means a string holds a NUL byte, which would end it
	// early. QEMU refuses such a path= file too.
	ErrNULInString = errors.New("smbios string contains a NUL byte")
)

// BuildOptions changes how BuildTable lays out a table. The zero value
// gives the type-11 structures and type 127 only.
type BuildOptions struct {
	// Platform puts a type-0 (BIOS) and a type-1 (System) structure before
	// the OEM strings, with the values a QEMU q35 guest with SeaBIOS shows,
	// so the table looks like a real one and readers must skip other types.
	Platform bool
}

// BuildTable lays out a table in the format of /sys/firmware/dmi/tables/DMI
// as QEMU does: each inner slice of oem becomes one type-11 structure (count
// byte, then its strings), with handles HandleOEMBase, HandleOEMBase+1, …,
// followed by a type-127 structure with handle HandleEndOfTable. An empty
// inner slice gives a valid type-11 structure with count 0.
//
// It refuses, with an error naming the structure, string and limit: more
// than MaxStrings strings in one structure (ErrTooManyStrings), an empty
// string (ErrEmptyString: SMBIOS cannot represent one), a string holding a
// NUL (ErrNULInString), and a table over MaxTableSize bytes
// (ErrTableTooLarge).
func BuildTable(oem [][]string, opts BuildOptions) ([]byte, error) {
	size := encodedSize(nil, nil) // type 127
	if opts.Platform {
		size += encodedSize(biosFormatted(), biosStrings()) + encodedSize(systemFormatted(), systemStrings())
	}
	for i, strs := range oem {
		if len(strs) > MaxStrings {
			return nil, fmt.Errorf("type 11 structure %d has %d strings, over the limit of %d: %w", i, len(strs), MaxStrings, ErrTooManyStrings)
		}
		for j, s := range strs {
			if s == "" {
				return nil, fmt.Errorf("type 11 structure %d, string %d: %w", i, j, ErrEmptyString)
			}
			if k := strings.IndexByte(s, 0); k >= 0 {
				return nil, fmt.Errorf("type 11 structure %d, string %d: byte %d: %w", i, j, k, ErrNULInString)
			}
		}
		size += encodedSize([]byte{0}, strs)
	}
	if size > MaxTableSize {
		return nil, fmt.Errorf("table would be %d bytes, over the %d-byte limit of the 32-bit SMBIOS entry point: %w", size, MaxTableSize, ErrTableTooLarge)
	}

	b := make([]byte, 0, size)
	if opts.Platform {
		b = AppendStructure(b, 0, HandleBIOS, biosFormatted(), biosStrings())
		b = AppendStructure(b, 1, HandleSystem, systemFormatted(), systemStrings())
	}
	for i, strs := range oem {
		// i < MaxTableSize/7 here, so the handle cannot reach 0x7F00.
		b = AppendStructure(b, TypeOEMStrings, HandleOEMBase+uint16(i), []byte{uint8(len(strs))}, strs)
	}
	return AppendStructure(b, TypeEndOfTable, HandleEndOfTable, nil, nil), nil
}

// BuildQEMUTable lays out the table QEMU builds for `-smbios type=11`
// options: all strings in one type-11 structure (handle 0x0E00), then type
// 127. Like QEMU it emits no type-11 structure when strs is empty. The
// limits are those of BuildTable.
func BuildQEMUTable(strs []string) ([]byte, error) {
	if len(strs) == 0 {
		return BuildTable(nil, BuildOptions{})
	}
	return BuildTable([][]string{strs}, BuildOptions{})
}

// AppendStructure appends one structure to dst and returns the extended
// slice: the header (typ, length byte uint8(4+len(formatted)), handle
// little-endian), formatted, each string followed by a NUL, and a final NUL
// (two NULs when strs is empty).
//
// It checks nothing: it is for tests and tools that need malformed tables
// (300 strings with a wrapped count byte, empty strings, NULs inside
// strings, a length byte that wraps past 251 formatted bytes). Build real
// tables with BuildTable.
func AppendStructure(dst []byte, typ uint8, handle uint16, formatted []byte, strs []string) []byte {
	dst = append(dst, typ, uint8(HeaderLen+len(formatted)))
	dst = binary.LittleEndian.AppendUint16(dst, handle)
	dst = append(dst, formatted...)
	if len(strs) == 0 {
		return append(dst, 0, 0)
	}
	for _, s := range strs {
		dst = append(dst, s...)
		dst = append(dst, 0)
	}
	return append(dst, 0)
}

// EntryPoint64 returns a 24-byte SMBIOS 3.0 (_SM3_) entry point, as in the
// sysfs file /sys/firmware/dmi/tables/smbios_entry_point, for a table of
// tableLen bytes at physical address tableAddr: version 3.0.0, entry point
// revision 1, checksummed so all 24 bytes sum to zero.
func EntryPoint64(tableLen uint32, tableAddr uint64) []byte {
	b := make([]byte, 24)
	copy(b, "_SM3_")
	b[6] = 24 // entry point length
	b[7] = 3  // SMBIOS major version
	b[8] = 0  // minor
	b[9] = 0  // docrev
	b[10] = 1 // entry point revision: 3.0 entry point
	binary.LittleEndian.PutUint32(b[12:16], tableLen)
	binary.LittleEndian.PutUint64(b[16:24], tableAddr)
	var sum uint8
	for _, c := range b {
		sum += c
	}
	b[5] = -sum
	return b
}

// biosFormatted is the formatted area QEMU's smbios_build_type_0_table
// writes: vendor, version, segment 0xE800, date, ROM size 0,
// characteristics 0x08 (not supported), extension bytes 0x00 0x14 (VM),
// release 0.0, embedded controller 0xFF.0xFF.
func biosFormatted() []byte {
	return []byte{1, 2, 0x00, 0xE8, 3, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x14, 0, 0, 0xFF, 0xFF}
}

func biosStrings() []string {
	return []string{"SeaBIOS", "1.16.3-debian-1.16.3-2", "04/01/2014"}
}

// systemFormatted is the formatted area of QEMU's
// smbios_build_type_1_table: manufacturer, product, version, no serial, a
// UUID, wake-up type 0x06 (power switch), no SKU or family.
func systemFormatted() []byte {
	return []byte{1, 2, 3, 0,
		0x56, 0x4d, 0x43, 0x52, 0x45, 0x44, 0x00, 0x40, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
		0x06, 0, 0}
}

func systemStrings() []string {
	return []string{"QEMU", "Standard PC (Q35 + ICH9, 2009)", "pc-q35-8.2"}
}
