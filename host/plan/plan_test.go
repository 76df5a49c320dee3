package plan

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

const vmPrefix = oemstring.PrefixVmcred

func enc(prefix, name string, size int) int { return oemstring.FormattedLen(prefix, name, size) }

func TestPlacement(t *testing.T) {
	creds := []Input{
		{Name: "api-key", Size: 32, Secret: true},
		{Name: "ENVIRONMENT", Size: 4},
	}
	// The manifest is planned as a secret (it holds digests of the values)
	// and, in verified mode, under vmcred's prefix.
	manifest := Input{Name: ManifestName, Size: 150, Secret: true}
	bin := oemstring.PrefixBinary
	tests := []struct {
		name string
		opts Options
		want []Item
	}{
		{
			name: "qemu files",
			opts: Options{Hypervisor: QEMU},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliverySMBIOS, Carrier: CarrierFile, Prefix: vmPrefix, Encoded: enc(vmPrefix, "api-key", 32)},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliverySMBIOS, Carrier: CarrierFile, Prefix: vmPrefix, Encoded: enc(vmPrefix, "ENVIRONMENT", 4)},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliverySMBIOS, Carrier: CarrierFile, Prefix: vmPrefix, Encoded: enc(vmPrefix, ManifestName, 150)},
			},
		},
		{
			name: "qemu inline non-secret, systemd mode",
			opts: Options{Hypervisor: QEMU, Inline: true, Mode: Systemd},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliverySMBIOS, Carrier: CarrierFile, Prefix: bin, Encoded: enc(bin, "api-key", 32)},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliverySMBIOS, Carrier: CarrierArgv, Prefix: bin, Encoded: enc(bin, "ENVIRONMENT", 4)},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliverySMBIOS, Carrier: CarrierFile, Prefix: bin, Encoded: enc(bin, ManifestName, 150)},
			},
		},
		{
			name: "qemu-microvm",
			opts: Options{Hypervisor: QEMUMicrovm},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliveryFwCfg, Carrier: CarrierFile, Encoded: 32},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliveryFwCfg, Carrier: CarrierFile, Encoded: 4},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliveryFwCfg, Carrier: CarrierFile, Encoded: 150},
			},
		},
		{
			name: "cloud-hypervisor command line and channel",
			opts: Options{Hypervisor: CloudHypervisor},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliveryChannel, Carrier: CarrierChannel, Encoded: 32,
					Reason: "secret: cloud-hypervisor's command line is readable by every local user (add --ch-api SOCKET to pass secrets through its API instead)"},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliverySMBIOS, Carrier: CarrierArgv, Prefix: vmPrefix, Encoded: enc(vmPrefix, "ENVIRONMENT", 4)},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliveryChannel, Carrier: CarrierChannel, Encoded: 150,
					Reason: "holds a digest of every value, which must not go on cloud-hypervisor's command line; the host's session carries it"},
			},
		},
		{
			name: "cloud-hypervisor api",
			opts: Options{Hypervisor: CloudHypervisor, CHAPI: true},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliverySMBIOS, Carrier: CarrierAPI, Prefix: vmPrefix, Encoded: enc(vmPrefix, "api-key", 32)},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliverySMBIOS, Carrier: CarrierAPI, Prefix: vmPrefix, Encoded: enc(vmPrefix, "ENVIRONMENT", 4)},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliverySMBIOS, Carrier: CarrierAPI, Prefix: vmPrefix, Encoded: enc(vmPrefix, ManifestName, 150)},
			},
		},
		{
			name: "firecracker",
			opts: Options{Hypervisor: Firecracker},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliveryChannel, Carrier: CarrierChannel, Encoded: 32, Reason: "firecracker has no SMBIOS or fw_cfg"},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliveryChannel, Carrier: CarrierChannel, Encoded: 4, Reason: "firecracker has no SMBIOS or fw_cfg"},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliveryChannel, Carrier: CarrierChannel, Encoded: 150, Reason: "firecracker has no SMBIOS or fw_cfg"},
			},
		},
		{
			name: "dmi",
			opts: Options{Hypervisor: DMI},
			want: []Item{
				{Name: "api-key", Size: 32, Secret: true, Delivery: DeliverySMBIOS, Carrier: CarrierTable, Prefix: vmPrefix, Encoded: enc(vmPrefix, "api-key", 32)},
				{Name: "ENVIRONMENT", Size: 4, Delivery: DeliverySMBIOS, Carrier: CarrierTable, Prefix: vmPrefix, Encoded: enc(vmPrefix, "ENVIRONMENT", 4)},
				{Name: ManifestName, Size: 150, Secret: true, Extra: true, Delivery: DeliverySMBIOS, Carrier: CarrierTable, Prefix: vmPrefix, Encoded: enc(vmPrefix, ManifestName, 150)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.SMBIOSReserve = -1
			opts.Extra = []Input{manifest}
			p, err := New(creds, opts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, p.Items); diff != "" {
				t.Errorf("items (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUsageMatchesSMBIOSBuilder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 40 {
		var creds []Input
		var strs []string
		for i := range n {
			name := fmt.Sprintf("c%d", i)
			size := r.IntN(700)
			creds = append(creds, Input{Name: name, Size: size, Secret: true})
			s, err := oemstring.Format(vmPrefix, name, credential.NewSecret(make([]byte, size)))
			if err != nil {
				t.Fatal(err)
			}
			strs = append(strs, string(s.Reveal()))
		}
		p, err := New(creds, Options{Hypervisor: DMI, SMBIOSReserve: -1})
		if err != nil {
			if errors.Is(err, ErrTableTooLarge) {
				continue
			}
			t.Fatal(err)
		}
		table, err := smbios.BuildQEMUTable(strs)
		if err != nil {
			t.Fatal(err)
		}
		want := len(table)
		if n == 0 {
			want = 0
		}
		if p.Usage.SMBIOSTable != want || tableSize(nil) != 6 {
			t.Errorf("%d strings: planner says %d bytes, smbios.BuildQEMUTable built %d", n, p.Usage.SMBIOSTable, want)
		}
	}
}

// exact returns a credential whose OEM string under prefix is exactly
// encoded bytes long, padding the name to make up for base64's steps of 4.
func exact(t *testing.T, prefix string, encoded int) Input {
	t.Helper()
	b64 := (encoded - len(prefix) - 2) &^ 3
	name := strings.Repeat("x", encoded-len(prefix)-1-b64)
	in := Input{Name: name, Size: b64 / 4 * 3, Secret: true}
	if got := enc(prefix, name, in.Size); got != encoded {
		t.Fatalf("exact(%d) made %d", encoded, got)
	}
	return in
}

func TestTableBoundary(t *testing.T) {
	for _, reserve := range []int{0, 303, DefaultSMBIOSReserve} {
		limit := smbios.MaxTableSize - reserve
		// Table = 12 + (a+1) + (b+1): a small credential, then one that
		// fills the table to exactly the limit, then one byte more.
		a := Input{Name: "a", Size: 40, Secret: true}
		fill := limit - tableBase - (enc(vmPrefix, "a", 40) + 1) - 1
		for _, tc := range []struct {
			b  Input
			ok bool
		}{{exact(t, vmPrefix, fill), true}, {exact(t, vmPrefix, fill+1), false}} {
			p, err := New([]Input{a, tc.b}, Options{Hypervisor: QEMU, SMBIOSReserve: reserve})
			if tc.ok {
				if err != nil {
					t.Fatalf("reserve %d: table of exactly %d bytes refused: %v", reserve, limit, err)
				}
				if p.Usage.SMBIOSTable != limit {
					t.Fatalf("reserve %d: table is %d bytes, want exactly %d", reserve, p.Usage.SMBIOSTable, limit)
				}
				continue
			}
			var le *LimitError
			if !errors.As(err, &le) || !errors.Is(err, ErrTableTooLarge) || !errors.Is(err, ErrLimit) {
				t.Fatalf("reserve %d: table of %d bytes: err = %v, want a table limit error", reserve, limit+1, err)
			}
			if le.Name != tc.b.Name || !strings.Contains(err.Error(), fmt.Sprintf("%d bytes, over the limit of %d", limit+1, limit)) {
				t.Errorf("error %q does not name %q and the limit", err, tc.b.Name)
			}
		}
	}
}

func TestLimitErrors(t *testing.T) {
	many := func(n, size int) []Input {
		var in []Input
		for i := range n {
			in = append(in, Input{Name: fmt.Sprintf("c%03d", i), Size: size, Secret: true})
		}
		return in
	}
	tests := []struct {
		name    string
		creds   []Input
		opts    Options
		wantErr error
		wantIn  []string
	}{
		{"credential over 1 MiB", []Input{{Name: "huge", Size: 1<<20 + 1, Secret: true}}, Options{Hypervisor: QEMU},
			ErrTooLarge, []string{`"huge"`, "1048577 bytes", "1048576-byte limit"}},
		{"credential over 1 MiB even by channel", []Input{{Name: "huge", Size: 1<<20 + 1}}, Options{Hypervisor: Firecracker},
			ErrTooLarge, []string{`"huge"`}},
		{"firmware total over 1 MiB", many(2, 600<<10), Options{Hypervisor: QEMUMicrovm},
			ErrTotalTooLarge, []string{`"c001"`, "1228800 bytes", "1048576-byte total"}},
		{"256 strings", many(256, 1), Options{Hypervisor: QEMU},
			ErrTooManyStrings, []string{`"c255"`, "OEM string 256", "255 strings"}},
		{"table too large", many(3, 30000), Options{Hypervisor: QEMU, SMBIOSReserve: -1},
			ErrTableTooLarge, []string{`"c001"`, "limit of 63487", "2048 reserved", "--overflow channel"}},
		{"fw_cfg name of 29 bytes", []Input{{Name: strings.Repeat("n", 29), Size: 3, Secret: true}}, Options{Hypervisor: QEMUMicrovm},
			ErrFwCfgName, []string{strings.Repeat("n", 29), "56 bytes", "55-byte", "name is 29 bytes", "allows 28", "--hypervisor qemu with -machine q35", "channel"}},
		{"17 fw_cfg files", many(17, 1), Options{Hypervisor: QEMUMicrovm},
			ErrTooManyFwCfg, []string{`"c016"`, "fw_cfg file 17", "cap of 16"}},
		{"cloud-hypervisor name with a comma", []Input{{Name: "a,b", Size: 1}}, Options{Hypervisor: CloudHypervisor},
			ErrNotCarried, []string{`"a,b"`, `contains ','`, "--ch-api"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.creds, tt.opts)
			if err == nil {
				t.Fatalf("New = %+v, want an error", p.Usage)
			}
			if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrLimit) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestFwCfgNameOf28Fits(t *testing.T) {
	p, err := New([]Input{{Name: strings.Repeat("n", 28), Size: 3, Secret: true}}, Options{Hypervisor: QEMUMicrovm})
	if err != nil {
		t.Fatal(err)
	}
	if p.Items[0].Delivery != DeliveryFwCfg {
		t.Errorf("delivery %s", p.Items[0].Delivery)
	}
	if p.Usage.FwCfgFiles != 1 || p.Usage.FwCfgFilesLimit != DefaultMaxFwCfgFiles {
		t.Errorf("usage %+v", p.Usage)
	}
}

func TestOverflowLargestFirst(t *testing.T) {
	creds := []Input{
		{Name: "small", Size: 1000, Secret: true},
		{Name: "big", Size: 30000, Secret: true},
		{Name: "mid", Size: 20000, Secret: true},
		{Name: "big2", Size: 30000, Secret: true},
		{Name: "long-name-for-fw-cfg-over-28-bytes", Size: 10, Secret: true},
	}
	extra := []Input{{Name: ManifestName, Size: 200}}
	tests := []struct {
		name      string
		opts      Options
		toChannel []string
	}{
		// 30000 bytes is 40000 as base64: a, big, mid, big2 need ~124 KB;
		// moving big2 (the later of the two largest), then big fits.
		{"qemu table", Options{Hypervisor: QEMU}, []string{"big", "big2"}},
		{"microvm name", Options{Hypervisor: QEMUMicrovm}, []string{"long-name-for-fw-cfg-over-28-bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Overflow = OverflowChannel
			tt.opts.Extra = extra
			tt.opts.SMBIOSReserve = -1
			p, err := New(creds, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, it := range p.Items {
				if it.Delivery == DeliveryChannel {
					got = append(got, it.Name)
					if !it.Overflowed || it.Reason == "" {
						t.Errorf("%s: overflowed %v reason %q", it.Name, it.Overflowed, it.Reason)
					}
				}
			}
			if diff := cmp.Diff(tt.toChannel, got); diff != "" {
				t.Errorf("moved to channel (-want +got):\n%s", diff)
			}
			var warned []string
			for _, w := range p.Warnings {
				if w.Code == WarnOverflowed {
					warned = append(warned, w.Name)
				}
			}
			if diff := cmp.Diff(tt.toChannel, warned); diff != "" {
				t.Errorf("overflow warnings (-want +got):\n%s", diff)
			}
			if p.Usage.SMBIOSTable > p.Usage.SMBIOSTableLimit {
				t.Errorf("usage %+v over the limit", p.Usage)
			}
		})
	}
}

func TestOverflowCannotMoveExtras(t *testing.T) {
	_, err := New(nil, Options{Hypervisor: QEMU, Overflow: OverflowChannel, SMBIOSReserve: 65000,
		Extra: []Input{{Name: ManifestName, Size: 600}}})
	if !errors.Is(err, ErrTableTooLarge) || !strings.Contains(err.Error(), "cannot move") {
		t.Fatalf("err = %v", err)
	}
}

func TestSystemdWindowWarning(t *testing.T) {
	// Each string: 29 + 2 + 1 + 1336 = 1368 bytes, 1369 with its NUL.
	// Two fit (2738), the third ends at 4107 > 4091.
	var creds []Input
	for i := range 4 {
		creds = append(creds, Input{Name: fmt.Sprintf("k%d", i), Size: 1002, Secret: true})
	}
	for _, mode := range []Mode{Systemd, Verified} {
		p, err := New(creds, Options{Hypervisor: QEMU, Mode: mode, SMBIOSReserve: -1})
		if err != nil {
			t.Fatal(err)
		}
		var got []Warning
		for _, w := range p.Warnings {
			if w.Code == WarnSystemdWindow {
				got = append(got, w)
			}
		}
		if mode == Verified {
			if len(got) != 0 {
				t.Errorf("verified mode warned: %v", got)
			}
			continue
		}
		if len(got) != 1 || got[0].Name != "k2" {
			t.Fatalf("warnings %+v, want one naming k2", got)
		}
		for _, s := range []string{"4091", `"k2"`, "ending at byte 4107", "--mode verified"} {
			if !strings.Contains(got[0].Message, s) {
				t.Errorf("warning %q lacks %q", got[0].Message, s)
			}
		}
	}
}

func TestSystemdWindowExact(t *testing.T) {
	// One string of 4090 bytes plus its NUL is exactly the window.
	in := exact(t, oemstring.PrefixBinary, SystemdWindow-1)
	name := in.Name
	for _, tc := range []struct {
		in   Input
		warn bool
	}{{in, false}, {Input{Name: name + "y", Size: in.Size, Secret: true}, true}} {
		p, err := New([]Input{tc.in}, Options{Hypervisor: QEMU, Mode: Systemd})
		if err != nil {
			t.Fatal(err)
		}
		warned := len(p.Warnings) == 1 && p.Warnings[0].Code == WarnSystemdWindow
		if warned != tc.warn {
			t.Errorf("%d bytes of string data: warned %v, want %v", p.Usage.SMBIOSStringData, warned, tc.warn)
		}
	}
}

func TestWarnings(t *testing.T) {
	p, err := New([]Input{{Name: "k", Size: 3, Secret: true}}, Options{Hypervisor: QEMU, InlineSecrets: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || p.Warnings[0].Code != WarnInlineSecret || !strings.Contains(p.Warnings[0].Message, "/proc/PID/cmdline") {
		t.Errorf("warnings %+v", p.Warnings)
	}
	p, err = New([]Input{{Name: "k", Size: 3, Secret: true}}, Options{Hypervisor: QEMUMicrovm})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || p.Warnings[0].Code != WarnFwCfgImported {
		t.Errorf("warnings %+v", p.Warnings)
	}
}

func TestOptionErrors(t *testing.T) {
	tests := []struct {
		name  string
		creds []Input
		opts  Options
		want  string
	}{
		{"no hypervisor", nil, Options{}, "unknown hypervisor"},
		{"bad mode", nil, Options{Hypervisor: QEMU, Mode: "x"}, "unknown mode"},
		{"bad overflow", nil, Options{Hypervisor: QEMU, Overflow: "x"}, "unknown overflow"},
		{"inline on microvm", nil, Options{Hypervisor: QEMUMicrovm, Inline: true}, "qemu only"},
		{"api on qemu", nil, Options{Hypervisor: QEMU, CHAPI: true}, "cloud-hypervisor only"},
		{"reserved name", []Input{{Name: ManifestName, Size: 1}}, Options{Hypervisor: QEMU}, "reserved"},
		{"duplicate", []Input{{Name: "a"}, {Name: "a"}}, Options{Hypervisor: QEMU}, "given twice"},
		{"bad name", []Input{{Name: "a/b"}}, Options{Hypervisor: QEMU}, "'/'"},
		{"fw_cfg cap", nil, Options{Hypervisor: QEMUMicrovm, MaxFwCfgFiles: 33}, "outside 1 to 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.creds, tt.opts)
			if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrOption with %q", err, tt.want)
			}
		})
	}
}

// TestFirecrackerNeedsNoOverflowFlag: on firecracker everything goes by
// channel, so a credential over 1 MiB needs no --overflow channel.
func TestFirecrackerNeedsNoOverflowFlag(t *testing.T) {
	big := []Input{{Name: "big", Size: 3 << 20, Secret: true}}
	p, err := New(big, Options{Hypervisor: Firecracker, MaxChannelSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Items) != 1 || p.Items[0].Delivery != DeliveryChannel {
		t.Errorf("items %+v, want big by channel", p.Items)
	}
	// QEMU still asks for it, and says so.
	_, err = New(big, Options{Hypervisor: QEMU, MaxChannelSize: 64 << 20})
	if err == nil || !strings.Contains(err.Error(), "add --overflow channel") {
		t.Errorf("qemu: err = %v, want a hint to add --overflow channel", err)
	}
}
