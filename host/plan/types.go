package plan

import (
	"fmt"
	"strings"

	"github.com/vmcred/vmcred/shared/oemstring"
)

// ManifestName is the credential that carries vmcred's manifest, as the
// guest agent expects it (always under oemstring.PrefixBinary, so that
// systemd importing it is harmless).
const ManifestName = "vmcred.manifest"

// Limits and defaults, with the upstream fact behind each.
const (
	// FwCfgPrefix is the fw_cfg directory systemd imports credentials from
	// (/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/).
	FwCfgPrefix = "opt/io.systemd.credentials/"
	// MaxFwCfgPath is the longest fw_cfg file name QEMU accepts:
	// FW_CFG_MAX_FILE_PATH - 1 ("name too long (max. 55 char)").
	MaxFwCfgPath = 55
	// MaxFwCfgName is what MaxFwCfgPath leaves for a credential name after
	// FwCfgPrefix: 28 bytes.
	MaxFwCfgName = MaxFwCfgPath - len(FwCfgPrefix)
	// DefaultMaxFwCfgFiles caps vmcred's fw_cfg files. QEMU has 0x20 file
	// slots by default (FW_CFG_FILE_SLOTS_DFLT), shared with its own files;
	// running out aborts QEMU with an assertion, not an error. Measured with
	// QEMU 7.2 and -nodefaults: q35 starts with 17 extra files and aborts
	// with 18, microvm starts with 24 and aborts with 25. Devices with
	// option ROMs take more slots, so vmcred uses at most 16.
	DefaultMaxFwCfgFiles = 16
	// MaxFwCfgSlots is QEMU's default slot count, the hard upper bound for
	// Options.MaxFwCfgFiles.
	MaxFwCfgSlots = 0x20
	// DefaultSMBIOSReserve is how many bytes of the 65535-byte SMBIOS table
	// are left for the hypervisor's own structures (types 0, 1, 3, 4 per
	// socket, 16, 17, 19, 32). QEMU 7.2 q35 uses 303 bytes with one socket
	// and 128 MiB, 336 with 16 GiB; cloud-hypervisor's types 0, 1 and 3 are
	// smaller. 2048 leaves room for a few dozen sockets.
	DefaultSMBIOSReserve = 2048
	// SystemdWindow is how many bytes of OEM string data (NUL terminators
	// included) systemd 252 to 256 read from one type-11 structure: a
	// single 4096-byte read of the sysfs entry, minus the 5-byte header.
	// Fixed in v257 (systemd PR #33539).
	SystemdWindow = 4096 - 5
	// MaxStrings is the most strings one type-11 structure can count (a u8;
	// QEMU and cloud-hypervisor put every string in one structure).
	MaxStrings = 255
)

// Hypervisor is the target the plan is for.
type Hypervisor string

// Targets.
const (
	// QEMU is QEMU with a machine type that builds SMBIOS tables (q35, pc).
	QEMU Hypervisor = "qemu"
	// QEMUMicrovm is QEMU's microvm machine type, which has no SMBIOS.
	QEMUMicrovm Hypervisor = "qemu-microvm"
	// CloudHypervisor is cloud-hypervisor (x86_64 SMBIOS).
	CloudHypervisor Hypervisor = "cloud-hypervisor"
	// Firecracker has neither SMBIOS nor fw_cfg.
	Firecracker Hypervisor = "firecracker"
	// DMI is a DMI table file for a simulated VM, laid out as QEMU does.
	DMI Hypervisor = "dmi"
)

// Hypervisors lists the targets, for usage messages.
func Hypervisors() []Hypervisor {
	return []Hypervisor{QEMU, QEMUMicrovm, CloudHypervisor, Firecracker, DMI}
}

// ParseHypervisor returns the target named s.
func ParseHypervisor(s string) (Hypervisor, error) {
	for _, h := range Hypervisors() {
		if string(h) == s {
			return h, nil
		}
	}
	return "", fmt.Errorf("%w: unknown hypervisor %q (want %s)", ErrOption, clip(s), joinHypervisors())
}

func joinHypervisors() string {
	var b strings.Builder
	for i, h := range Hypervisors() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(h))
	}
	return b.String()
}

// Mode is the OEM string namespace credentials are written under.
type Mode string

// Modes.
const (
	// Verified writes credentials under oemstring.PrefixVmcred, which stock
	// systemd ignores, so only what the vmcred agent verified reaches
	// services (through /run/credstore).
	Verified Mode = "verified"
	// Systemd writes them under oemstring.PrefixBinary, so systemd imports
	// them too (unverified copies in /run/credentials/@system).
	Systemd Mode = "systemd"
)

// ParseMode returns the mode named s.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case Verified, Systemd:
		return Mode(s), nil
	}
	return "", fmt.Errorf("%w: unknown mode %q (want verified or systemd)", ErrOption, clip(s))
}

// Prefix is the OEM string prefix credentials get in this mode.
func (m Mode) Prefix() string {
	if m == Systemd {
		return oemstring.PrefixBinary
	}
	return oemstring.PrefixVmcred
}

// Overflow says what happens to credentials that do not fit.
type Overflow string

// Overflow policies.
const (
	// OverflowFail refuses the plan.
	OverflowFail Overflow = "fail"
	// OverflowChannel moves what does not fit to the channel.
	OverflowChannel Overflow = "channel"
)

// ParseOverflow returns the policy named s.
func ParseOverflow(s string) (Overflow, error) {
	switch Overflow(s) {
	case OverflowFail, OverflowChannel:
		return Overflow(s), nil
	}
	return "", fmt.Errorf("%w: unknown overflow policy %q (want fail or channel)", ErrOption, clip(s))
}

// Delivery is how a credential reaches the guest; the values are those of
// the manifest's deliveries.
type Delivery string

// Deliveries.
const (
	// DeliverySMBIOS is a type-11 OEM string.
	DeliverySMBIOS Delivery = "smbios"
	// DeliveryFwCfg is a fw_cfg file opt/io.systemd.credentials/NAME.
	DeliveryFwCfg Delivery = "fwcfg"
	// DeliveryChannel is sent to the guest agent in the host's session.
	DeliveryChannel Delivery = "channel"
)

// Carrier is how the host hands a credential to the hypervisor.
type Carrier string

// Carriers.
const (
	// CarrierFile is a 0400 payload file the hypervisor reads at start
	// (QEMU -smbios type=11,path= and -fw_cfg file=).
	CarrierFile Carrier = "file"
	// CarrierArgv is the hypervisor's command line (QEMU value=,
	// cloud-hypervisor --platform oem_strings=[...]): visible to every
	// local user in /proc/PID/cmdline.
	CarrierArgv Carrier = "argv"
	// CarrierAPI is cloud-hypervisor's PUT /api/v1/vm.create request.
	CarrierAPI Carrier = "api"
	// CarrierTable is the DMI table file of the dmi target.
	CarrierTable Carrier = "table"
	// CarrierChannel is the host's session with the guest agent (vmcred-host
	// push or run).
	CarrierChannel Carrier = "channel"
)

// Input is one credential to plan: never its value.
type Input struct {
	Name string
	// Size is the value's length in bytes.
	Size int
	// Secret is false only for non-secret strings (--static, a manifest
	// without a channel token), which may go on a command line.
	Secret bool
}

// Item is one credential's place in a Plan.
type Item struct {
	Name   string `json:"name"`
	Size   int    `json:"size"`
	Secret bool   `json:"secret"`
	// Extra marks a string vmcred adds (Options.Extra: the manifest), which
	// always goes under oemstring.PrefixBinary and never overflows.
	Extra    bool     `json:"extra,omitempty"`
	Delivery Delivery `json:"delivery"`
	Carrier  Carrier  `json:"carrier"`
	// Prefix is the OEM string prefix, for DeliverySMBIOS.
	Prefix string `json:"prefix,omitempty"`
	// Encoded is what the item costs its carrier in bytes: the OEM string's
	// length without its NUL for DeliverySMBIOS, else Size.
	Encoded int `json:"encoded"`
	// Reason says why the item goes by channel.
	Reason string `json:"reason,omitempty"`
	// Overflowed is true when OverflowChannel moved the item to the channel.
	Overflowed bool `json:"overflowed,omitempty"`
}

// Usage is how much of each limit a Plan uses.
type Usage struct {
	// SMBIOSStrings is the number of OEM strings in the type-11 structure.
	SMBIOSStrings      int `json:"smbios_strings"`
	SMBIOSStringsLimit int `json:"smbios_strings_limit"`
	// SMBIOSTable is the size of the type-11 and type-127 structures as
	// smbios.BuildQEMUTable lays them out; 0 when there are no strings.
	SMBIOSTable      int `json:"smbios_table_bytes"`
	SMBIOSTableLimit int `json:"smbios_table_limit"`
	// SMBIOSReserve is what SMBIOSTableLimit leaves of 65535 for the
	// hypervisor's own structures.
	SMBIOSReserve int `json:"smbios_reserve"`
	// SMBIOSStringData is the string data, NUL terminators included, that
	// systemd 252-256 read only the first SystemdWindow bytes of.
	SMBIOSStringData int `json:"smbios_string_data"`
	FwCfgFiles       int `json:"fwcfg_files"`
	FwCfgFilesLimit  int `json:"fwcfg_files_limit"`
	// FirmwareBytes are the decoded bytes of the SMBIOS and fw_cfg
	// deliveries, against systemd's 1 MiB total.
	FirmwareBytes int `json:"firmware_bytes"`
	FirmwareLimit int `json:"firmware_limit"`
	ChannelBytes  int `json:"channel_bytes"`
}

// Warning codes: stable identifiers for tests and launchers.
const (
	// WarnSystemdWindow: in systemd mode the OEM strings go past what
	// systemd 252-256 read.
	WarnSystemdWindow = "systemd-window"
	// WarnInlineSecret: a secret is on the hypervisor's command line.
	WarnInlineSecret = "inline-secret"
	// WarnFwCfgImported: in verified mode, fw_cfg credentials are still
	// imported by stock systemd (fw_cfg has no vmcred namespace).
	WarnFwCfgImported = "fwcfg-imported-by-systemd"
	// WarnOverflowed: a credential was moved to the channel.
	WarnOverflowed = "moved-to-channel"
)

// Warning is something a plan accepted but the operator should know. It
// never holds a value.
type Warning struct {
	Code    string `json:"code"`
	Name    string `json:"name,omitempty"`
	Message string `json:"message"`
}

// String returns the message.
func (w Warning) String() string { return w.Message }

// Plan is where every credential goes, and how much of each limit that
// uses. It holds no values.
type Plan struct {
	VM         string     `json:"vm"`
	Hypervisor Hypervisor `json:"hypervisor"`
	Mode       Mode       `json:"mode"`
	Overflow   Overflow   `json:"overflow"`
	Items      []Item     `json:"credentials"`
	Usage      Usage      `json:"usage"`
	Warnings   []Warning  `json:"warnings"`
}

// Item returns the item named name.
func (p *Plan) Item(name string) (Item, bool) {
	for _, it := range p.Items {
		if it.Name == name {
			return it, true
		}
	}
	return Item{}, false
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
