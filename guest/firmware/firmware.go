// Package firmware reads the credentials a hypervisor handed the guest
// through firmware: SMBIOS type-11 OEM strings (the whole DMI table, or the
// per-structure sysfs entries) and QEMU fw_cfg files. It parses them with
// systemd's rules (shared/oemstring) in systemd's precedence order, fw_cfg
// before SMBIOS, so the agent and `systemd-creds --system list` agree.
//
// Everything is read through an fs.FS rooted at "/", so tests use table
// files and folders. Guest packages only.
package firmware

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// Default locations, relative to the root of the FS (i.e. "/").
const (
	DefaultDMITable   = "sys/firmware/dmi/tables/DMI"
	DefaultDMIEntries = "sys/firmware/dmi/entries"
	DefaultFwCfg      = "sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
	fwCfgRoot         = "sys/firmware/qemu_fw_cfg"
	dmiRoot           = "sys/firmware/dmi"
)

// maxNotes bounds the count-byte notes of one table: a hostile table of
// 100,000 tiny type-11 structures gets 8 notes and a count, not a note
// (and a warning line, and a line of status.json) each.
const maxNotes = 8

// Source kinds, as they appear in reports and `list --json`.
const (
	SourceSMBIOS = "smbios"
	SourceFwCfg  = "fw_cfg"
)

// Options names what to read. Paths are relative to the FS root. When all
// are empty, the defaults are read: the DMI table (falling back to the
// entries), and fw_cfg if present. When any is set, only those are read.
type Options struct {
	DMITable   string
	DMIEntries string
	FwCfg      string
	// Prefixes are the OEM string prefixes to accept (default: all three,
	// systemd's and vmcred's).
	Prefixes []string
	// MaxTableSize caps the DMI table read (default 1 MiB + 64 KiB).
	MaxTableSize int64
}

// Status describes one source that was consulted.
type Status struct {
	Kind       string   `json:"kind"`            // SourceSMBIOS or SourceFwCfg
	Path       string   `json:"path"`            // absolute path read
	Found      bool     `json:"found"`           // it existed
	Structures int      `json:"structures"`      // type-11 structures (SMBIOS) or entries (fw_cfg)
	Strings    int      `json:"strings"`         // OEM strings or fw_cfg files read
	Notes      []string `json:"notes,omitempty"` // warnings that are not faults
	// Hint says what to load when the source's kernel interface is
	// missing, should the hypervisor pass credentials this way. It is
	// neither a fault nor a warning: most guests without SMBIOS or fw_cfg
	// have no firmware carrier at all (Firecracker, cloud-hypervisor as
	// microvm.nix runs it), and the host's session brings everything. Only
	// a load from firmware alone that found nothing says it (ErrNoSource).
	Hint  string `json:"hint,omitempty"`
	Fault string `json:"fault,omitempty"` // a fault; what was read before it is still used
}

// Report is everything read, parsed with systemd's rules.
type Report struct {
	Sources []Status
	Parsed  oemstring.Result
}

// Faulted reports whether any source had a fault (a damaged table, an
// unreadable file): its credentials may be incomplete.
func (r Report) Faulted() bool {
	for _, s := range r.Sources {
		if s.Fault != "" {
			return true
		}
	}
	return false
}

// ErrNoSource means no firmware credential source exists at all.
var ErrNoSource = errors.New("no firmware credential source found")

// Read reads the configured sources from fsys. It returns an error only when
// nothing could be read at all; faults in one source are reported in its
// Status and the credentials read before the fault are kept.
func Read(fsys fs.FS, opt Options) (Report, error) {
	if opt.MaxTableSize == 0 {
		opt.MaxTableSize = credential.MaxTotalSize + 64<<10
	}
	prefixes := opt.Prefixes
	if len(prefixes) == 0 {
		prefixes = oemstring.AllPrefixes
	}
	p := oemstring.NewParser(prefixes...)
	var rep Report
	explicit := opt.DMITable != "" || opt.DMIEntries != "" || opt.FwCfg != ""

	fwDir := opt.FwCfg
	if !explicit {
		fwDir = DefaultFwCfg
	}
	if fwDir != "" {
		st := readFwCfg(fsys, fwDir, p)
		if !explicit && !st.Found {
			if _, err := fs.Stat(fsys, fwCfgRoot); err != nil {
				st.Hint = "/" + fwCfgRoot + " is missing: if the hypervisor passes credentials by fw_cfg, load the qemu_fw_cfg kernel module (modprobe qemu_fw_cfg)"
			}
		}
		rep.Sources = append(rep.Sources, st)
	}

	switch {
	case explicit:
		if opt.DMITable != "" {
			rep.Sources = append(rep.Sources, readTable(fsys, opt.DMITable, opt.MaxTableSize, p))
		}
		if opt.DMIEntries != "" {
			rep.Sources = append(rep.Sources, readEntries(fsys, opt.DMIEntries, p))
		}
	default:
		st := readTable(fsys, DefaultDMITable, opt.MaxTableSize, p)
		if !st.Found {
			st2 := readEntries(fsys, DefaultDMIEntries, p)
			if !st2.Found {
				if _, err := fs.Stat(fsys, dmiRoot); err != nil {
					st2.Hint = "/" + dmiRoot + " is missing: if the hypervisor passes SMBIOS OEM strings, load the dmi-sysfs kernel module (modprobe dmi-sysfs; CONFIG_DMI_SYSFS)"
				}
			}
			rep.Sources = append(rep.Sources, st, st2)
		} else {
			rep.Sources = append(rep.Sources, st)
		}
	}

	rep.Parsed = p.Result()
	found := false
	for _, s := range rep.Sources {
		found = found || s.Found
	}
	if !found {
		var where []string
		for _, s := range rep.Sources {
			where = append(where, s.Path)
		}
		msg := strings.Join(where, ", ")
		for _, s := range rep.Sources {
			if s.Hint != "" {
				msg += "; " + s.Hint
			}
		}
		msg += "; with no firmware carrier (Firecracker, cloud-hypervisor), run vmcred-guest agent and let the host's session (vmcred-host push) bring everything"
		return rep, fmt.Errorf("%w: none of %s", ErrNoSource, msg)
	}
	return rep, nil
}

func abs(p string) string { return "/" + strings.TrimPrefix(p, "/") }

// fault is err's text with the absolute path: errors from an fs.FS name
// paths relative to its root ("open sys/…"), which reads like a path
// under the working directory.
func fault(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Sprintf("%s %s: %v", pe.Op, abs(pe.Path), pe.Err)
	}
	return err.Error()
}

func readTable(fsys fs.FS, name string, maxSize int64, p *oemstring.Parser) Status {
	st := Status{Kind: SourceSMBIOS, Path: abs(name)}
	data, err := readFileCapped(fsys, name, maxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return st
	}
	st.Found = true
	if err != nil {
		st.Fault = fault(err)
		return st
	}
	// ScanTable keeps no structure: memory stays bounded by the largest
	// one, whatever the number of structures in the table.
	mismatches := 0
	err = smbios.ScanTable(data, smbios.TypeOEMStrings, func(i int, s smbios.Structure) bool {
		if s.Type != smbios.TypeOEMStrings {
			return true
		}
		// systemd's read_smbios11_field requires header length 5 (one count
		// byte); it refuses the structure otherwise, and so do we.
		if s.Length != smbios.OEMLength {
			st.Fault = fmt.Sprintf("%s: type 11 structure %d at offset %d: header length is not 5", st.Path, i, s.Offset)
			return false
		}
		o := smbios.OEM{Structure: i, Offset: s.Offset, Handle: s.Handle, Count: int(s.Formatted[0]), Strings: s.Strings}
		if o.Count != len(o.Strings) {
			if mismatches++; mismatches <= maxNotes {
				st.Notes = append(st.Notes, o.CountMismatch().Error())
			}
		}
		st.Structures++
		st.Strings += len(o.Strings)
		p.AddStrings(SourceSMBIOS, o.Strings)
		return true
	})
	if mismatches > maxNotes {
		st.Notes = append(st.Notes, fmt.Sprintf("%s: %d more type 11 structures whose count byte disagrees with their strings", st.Path, mismatches-maxNotes))
	}
	switch {
	case st.Fault != "":
	case errors.Is(err, smbios.ErrNoEndOfTable):
		st.Notes = append(st.Notes, st.Path+": table ends without a type-127 structure (newer kernels may cut it)")
	case err != nil:
		st.Fault = fmt.Sprintf("%s: %v", st.Path, err)
	}
	return st
}

func readEntries(fsys fs.FS, dir string, p *oemstring.Parser) Status {
	st := Status{Kind: SourceSMBIOS, Path: abs(dir)}
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		st.Fault = fault(err)
		return st
	}
	if _, err := fs.Stat(fsys, dir); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			st.Found = true
			st.Fault = fault(err)
		}
		return st
	}
	st.Found = true
	strs, err := smbios.ReadEntriesOEMStrings(sub)
	for _, set := range strs {
		st.Structures++
		st.Strings += len(set)
		p.AddStrings(SourceSMBIOS, set)
	}
	if err != nil {
		st.Fault = fmt.Sprintf("%s: %v", st.Path, err)
	}
	return st
}

// readFwCfg reads each entry's raw file, as systemd's import_credentials_qemu
// does: the entry's name is the credential's name, its bytes the value.
func readFwCfg(fsys fs.FS, dir string, p *oemstring.Parser) Status {
	st := Status{Kind: SourceFwCfg, Path: abs(dir)}
	ents, err := fs.ReadDir(fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return st
	}
	st.Found = true
	if err != nil {
		st.Fault = fault(err)
		return st
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		st.Structures++
		raw := path.Join(dir, e.Name(), "raw")
		data, err := readFileCapped(fsys, raw, credential.MaxSize+1)
		if err != nil {
			st.Fault = fmt.Sprintf("fw_cfg credential %q: %s", e.Name(), fault(err))
			continue
		}
		st.Strings++
		p.AddRaw(SourceFwCfg, e.Name(), data)
	}
	return st
}

// readFileCapped reads a whole file, refusing one larger than max. sysfs
// attributes report size 0 or a maximum, so it reads to EOF in a loop
// rather than trusting Stat (and never stops at one 4 KiB page, the bug in
// systemd ≤ 256). Stat's size, when it is within max, only sizes the first
// buffer, so a table is normally read into one buffer of the right size.
func readFileCapped(fsys fs.FS, name string, max int64) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := int64(4 << 10)
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 && fi.Size() <= max {
		// One more byte, so that EOF is seen without growing.
		size = fi.Size() + 1
	}
	buf := make([]byte, 0, min(size, max+1))
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), int(max+1)-len(buf)))
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > max {
			return nil, fmt.Errorf("read %s: over %d bytes", abs(name), max)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return buf, nil
			}
			return nil, fmt.Errorf("read %s: %w", abs(name), err)
		}
	}
}
