package firmware

import (
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/smbios"
)

func table(t *testing.T, strs ...string) []byte {
	t.Helper()
	b, err := smbios.BuildQEMUTable(strs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func entry(strs ...string) []byte {
	return smbios.AppendStructure(nil, 11, 0x0e00, []byte{byte(len(strs))}, strs)
}

type parsed struct {
	Values  map[string]string
	Sources []string
	Skipped []string
}

func summarize(r Report) parsed {
	p := parsed{Values: map[string]string{}}
	for _, e := range r.Parsed.Entries {
		p.Values[e.Source+"/"+e.Name] = string(e.Value.Reveal())
	}
	for _, s := range r.Sources {
		state := "missing"
		if s.Found {
			state = "found"
		}
		if s.Fault != "" {
			state = "fault"
		}
		p.Sources = append(p.Sources, s.Kind+" "+s.Path+" "+state)
	}
	for _, s := range r.Parsed.Skipped {
		p.Skipped = append(p.Skipped, s.Source+"/"+s.Name+": "+string(s.Reason))
	}
	return p
}

func TestDefaults(t *testing.T) {
	fw := "sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/"
	tests := []struct {
		name    string
		fs      fstest.MapFS
		want    parsed
		wantErr string
		note    string
		hint    string
		quiet   bool
	}{
		{
			name: "table and fw_cfg, fw_cfg wins a duplicate",
			fs: fstest.MapFS{
				DefaultDMITable:     {Data: table(t, "io.systemd.credential:k=from-smbios", "io.systemd.credential:s=smbios-only")},
				fw + "k/raw":        {Data: []byte("from-fwcfg")},
				fw + "k/size":       {Data: []byte("10")},
				fw + "bad:name/raw": {Data: []byte("x")},
				"sys/firmware/dmi/tables/smbios_entry_point": {Data: []byte("_SM3_")},
			},
			want: parsed{
				Values:  map[string]string{"fw_cfg/k": "from-fwcfg", "smbios/s": "smbios-only"},
				Sources: []string{"fw_cfg /" + DefaultFwCfg + " found", "smbios /" + DefaultDMITable + " found"},
				Skipped: []string{"fw_cfg/bad:name: name is not valid", "smbios/k: credential set twice, first one wins"},
			},
		},
		{
			name: "entries when the table is missing",
			fs: fstest.MapFS{
				DefaultDMIEntries + "/11-0/raw": {Data: entry("io.systemd.credential:a=1")},
				DefaultDMIEntries + "/11-1/raw": {Data: entry("io.systemd.credential:b=2")},
				DefaultDMIEntries + "/1-0/raw":  {Data: []byte{1, 4, 0, 0, 0, 0}},
				"sys/firmware/qemu_fw_cfg/rev":  {Data: []byte("3")},
			},
			want: parsed{
				Values:  map[string]string{"smbios/a": "1", "smbios/b": "2"},
				Sources: []string{"fw_cfg /" + DefaultFwCfg + " missing", "smbios /" + DefaultDMITable + " missing", "smbios /" + DefaultDMIEntries + " found"},
			},
			// fw_cfg present but unused: normal, nothing said.
			quiet: true,
		},
		{
			name:    "nothing at all names both kernel modules",
			fs:      fstest.MapFS{"etc/hostname": {Data: []byte("vm")}},
			wantErr: "dmi-sysfs",
			note:    "qemu_fw_cfg",
		},
		{
			name: "microvm: fw_cfg only, no SMBIOS",
			fs: fstest.MapFS{
				fw + "api-key/raw": {Data: []byte("v")},
			},
			want: parsed{
				Values:  map[string]string{"fw_cfg/api-key": "v"},
				Sources: []string{"fw_cfg /" + DefaultFwCfg + " found", "smbios /" + DefaultDMITable + " missing", "smbios /" + DefaultDMIEntries + " missing"},
			},
			// No SMBIOS is normal here (issue 18, item 9): a hint, never
			// a note the agent would warn with.
			hint:  "dmi-sysfs",
			quiet: true,
		},
		{
			name:    "no firmware carrier at all (Firecracker): hints only, in the error",
			fs:      fstest.MapFS{"proc/cmdline": {Data: []byte("console=ttyS0")}},
			wantErr: "vmcred-host push",
			hint:    "modprobe dmi-sysfs",
			quiet:   true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Read(tt.fs, Options{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if diff := cmp.Diff(tt.want, summarize(rep)); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			var notes, hints string
			for _, s := range rep.Sources {
				notes += strings.Join(s.Notes, "\n")
				hints += s.Hint
			}
			if tt.quiet && notes != "" {
				t.Errorf("notes %q: want none (they become warnings on every start)", notes)
			}
			if !strings.Contains(hints, tt.hint) {
				t.Errorf("hints %q lack %q", hints, tt.hint)
			}
			if tt.note != "" {
				var all string
				for _, s := range rep.Sources {
					all += strings.Join(s.Notes, "\n") + s.Hint
				}
				if err != nil {
					all += err.Error()
				}
				if !strings.Contains(all, tt.note) {
					t.Errorf("notes %q lack %q", all, tt.note)
				}
			}
		})
	}
}

func TestExplicitSourcesAndFaults(t *testing.T) {
	good := table(t, "io.systemd.credential:a=1", "io.systemd.credential:b=2")
	bad5 := smbios.AppendStructure(nil, 11, 0x0e00, []byte{1, 0}, []string{"io.systemd.credential:x=1"})
	bad5 = smbios.AppendStructure(bad5, 127, 0x7f00, nil, nil)
	fsys := fstest.MapFS{
		"t/good":                      {Data: good},
		"t/cut":                       {Data: good[:len(good)-10]},
		"t/noend":                     {Data: good[:len(good)-6]},
		"t/len6":                      {Data: bad5},
		DefaultFwCfg + "/ignored/raw": {Data: []byte("not read when a source is named")},
	}
	tests := []struct {
		file   string
		values map[string]string
		fault  string
		note   string
	}{
		{file: "t/good", values: map[string]string{"smbios/a": "1", "smbios/b": "2"}},
		{file: "t/cut", values: map[string]string{}, fault: "no double NUL"},
		{file: "t/noend", values: map[string]string{"smbios/a": "1", "smbios/b": "2"}, note: "without a type-127"},
		{file: "t/len6", values: map[string]string{}, fault: "header length is not 5"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			rep, err := Read(fsys, Options{DMITable: tt.file})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.values, summarize(rep).Values); diff != "" {
				t.Errorf("values (-want +got)\n%s", diff)
			}
			if len(rep.Sources) != 1 {
				t.Fatalf("read %d sources, want only the named table", len(rep.Sources))
			}
			s := rep.Sources[0]
			if (tt.fault == "") != (s.Fault == "") || !strings.Contains(s.Fault, tt.fault) {
				t.Errorf("fault %q, want %q", s.Fault, tt.fault)
			}
			if rep.Faulted() != (tt.fault != "") {
				t.Errorf("Faulted() = %v", rep.Faulted())
			}
			if tt.note != "" && !strings.Contains(strings.Join(s.Notes, " "), tt.note) {
				t.Errorf("notes %q lack %q", s.Notes, tt.note)
			}
		})
	}
}

func TestTableSizeCap(t *testing.T) {
	fsys := fstest.MapFS{"big": {Data: make([]byte, 2048)}}
	rep, err := Read(fsys, Options{DMITable: "big", MaxTableSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.Sources[0].Fault, "over 1024 bytes") {
		t.Errorf("fault %q", rep.Sources[0].Fault)
	}
}
