package plan

import (
	"fmt"
	"strings"

	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// Options are the planner's inputs besides the credentials.
type Options struct {
	// VM is the VM's name, recorded in the plan.
	VM string
	// Hypervisor is the target. Required.
	Hypervisor Hypervisor
	// Mode defaults to Verified.
	Mode Mode
	// Overflow defaults to OverflowFail.
	Overflow Overflow
	// CHAPI says cloud-hypervisor is driven through its REST API
	// (--ch-api), so every string, secrets included, goes in the vm.create
	// request instead of the command line or the session.
	CHAPI bool
	// Inline puts non-secret OEM strings on QEMU's command line (value=)
	// instead of in files.
	Inline bool
	// InlineSecrets puts secret OEM strings on QEMU's command line too,
	// where every local user can read them; each gets a warning. Neither
	// applies to Extra strings, which stay in files.
	InlineSecrets bool
	// Extra are the strings vmcred adds: the manifest (ManifestName) and
	// vmm.notify_socket. They are planned after the credentials, count in
	// every limit and never overflow. The manifest uses the mode's prefix
	// (vmcred's own in verified mode, so systemd does not import it);
	// vmm.notify_socket uses oemstring.PrefixBinary, for systemd. An extra
	// that is Secret (the manifest: it holds digests of the values) never
	// goes on a command line; on cloud-hypervisor without its API it is
	// left to the host's session.
	Extra []Input
	// SMBIOSReserve is how many bytes of the 65535-byte table to leave for
	// the hypervisor's own structures. Negative means the default:
	// DefaultSMBIOSReserve, or 0 for DMI (whose table holds only vmcred's
	// structures).
	SMBIOSReserve int
	// MaxFwCfgFiles caps fw_cfg files; 0 means DefaultMaxFwCfgFiles.
	MaxFwCfgFiles int
	// MaxChannelSize lets a credential over systemd's 1 MiB
	// (credential.MaxSize), up to this size, go by channel when Overflow
	// is OverflowChannel: only the channel can carry it (systemd skips
	// bigger firmware credentials). 0 keeps the 1 MiB limit for every
	// delivery. Note that systemd's LoadCredential= also stops at 1 MiB
	// per unit, so services read such a credential from the credstore.
	MaxChannelSize int
}

// New plans the delivery of creds (in the given order, which is the order
// of the OEM strings) and opts.Extra (after them). It checks every limit in
// the package documentation and returns a *LimitError for the first one
// broken (with OverflowFail), or an error wrapping ErrOption for
// inconsistent options or inputs. What goes by channel is left to the
// host's session (vmcred-host push or run), which dials the guest agent.
func New(creds []Input, opts Options) (*Plan, error) {
	o, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	if err := checkInputs(creds, o.Extra); err != nil {
		return nil, err
	}
	p := &Plan{VM: o.VM, Hypervisor: o.Hypervisor, Mode: o.Mode, Overflow: o.Overflow, Warnings: []Warning{}}

	// Per-credential limit: no firmware delivery takes more than systemd's
	// 1 MiB; only the channel may, up to MaxChannelSize and on request.
	all := append(append([]Input(nil), creds...), o.Extra...)
	for i, c := range all {
		if c.Size <= credential.MaxSize {
			continue
		}
		// Firecracker sends everything by channel anyway: no --overflow
		// channel to ask for.
		byChannel := o.Overflow == OverflowChannel || o.Hypervisor == Firecracker
		if i >= len(creds) || !byChannel || c.Size > o.MaxChannelSize {
			le := &LimitError{Name: c.Name, Size: c.Size, Err: ErrTooLarge,
				Detail: fmt.Sprintf("over systemd's %d-byte limit per credential (CREDENTIAL_SIZE_MAX)", credential.MaxSize)}
			switch {
			case i >= len(creds):
			case c.Size <= o.MaxChannelSize:
				le.Hint = "add --overflow channel to send it by channel"
			}
			return nil, le
		}
	}

	for i, c := range all {
		extra := i >= len(creds)
		it, problem := o.place(c, extra)
		if c.Size > credential.MaxSize {
			it = toChannel(it, fmt.Sprintf("overflow: over systemd's %d-byte limit per credential, which only the channel is free of "+
				"(a service's LoadCredential= stops at 1 MiB too: read it from the credstore)", credential.MaxSize))
			it.Overflowed = true
			p.Items = append(p.Items, it)
			continue
		}
		if problem != nil {
			if extra || o.Overflow == OverflowFail {
				return nil, problem
			}
			it = toChannel(it, problem.Detail)
			it.Overflowed = true
		}
		p.Items = append(p.Items, it)
	}

	for {
		v := o.violation(p.Items)
		if v == nil {
			break
		}
		if o.Overflow == OverflowFail {
			return nil, v.err
		}
		k := largest(p.Items, v.candidate)
		if k < 0 {
			v.err.Hint = "the strings vmcred adds cannot move to the channel; pass fewer or smaller credentials"
			return nil, v.err
		}
		p.Items[k] = toChannel(p.Items[k], v.moved)
		p.Items[k].Overflowed = true
	}

	p.Usage = o.usage(p.Items)
	p.Warnings = o.warnings(p.Items, p.Usage)
	return p, nil
}

// normalize fills in defaults and checks option combinations.
func (o Options) normalize() (Options, error) {
	if _, err := ParseHypervisor(string(o.Hypervisor)); err != nil {
		return o, err
	}
	if o.Mode == "" {
		o.Mode = Verified
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return o, err
	}
	if o.Overflow == "" {
		o.Overflow = OverflowFail
	}
	if _, err := ParseOverflow(string(o.Overflow)); err != nil {
		return o, err
	}
	if (o.Inline || o.InlineSecrets) && o.Hypervisor != QEMU {
		return o, optionf("inline OEM strings apply to --hypervisor qemu only, not %s", o.Hypervisor)
	}
	if o.CHAPI && o.Hypervisor != CloudHypervisor {
		return o, optionf("the cloud-hypervisor API applies to --hypervisor cloud-hypervisor only, not %s", o.Hypervisor)
	}
	if o.SMBIOSReserve < 0 {
		o.SMBIOSReserve = DefaultSMBIOSReserve
		if o.Hypervisor == DMI {
			o.SMBIOSReserve = 0
		}
	}
	if o.SMBIOSReserve > smbios.MaxTableSize {
		return o, optionf("smbios reserve of %d bytes is over the %d-byte table limit", o.SMBIOSReserve, smbios.MaxTableSize)
	}
	if o.MaxFwCfgFiles == 0 {
		o.MaxFwCfgFiles = DefaultMaxFwCfgFiles
	}
	if o.MaxFwCfgFiles < 0 || o.MaxFwCfgFiles > MaxFwCfgSlots {
		return o, optionf("fw_cfg file cap %d is outside 1 to %d (QEMU's default slot count)", o.MaxFwCfgFiles, MaxFwCfgSlots)
	}
	return o, nil
}

// checkInputs validates names and sizes and refuses duplicates, including
// a credential that takes an extra string's name.
func checkInputs(creds, extra []Input) error {
	seen := make(map[string]bool, len(creds)+len(extra))
	reserved := make(map[string]bool, len(extra)+1)
	reserved[ManifestName] = true
	for _, e := range extra {
		reserved[e.Name] = true
	}
	for i, c := range append(append([]Input(nil), creds...), extra...) {
		isExtra := i >= len(creds)
		if err := credential.ValidateName(c.Name); err != nil {
			return fmt.Errorf("%w: %w", ErrOption, err)
		}
		if c.Size < 0 {
			return optionf("credential %q has a negative size %d", c.Name, c.Size)
		}
		if !isExtra && reserved[c.Name] {
			return optionf("credential name %q is reserved for the string vmcred adds itself; rename the credential", c.Name)
		}
		if seen[c.Name] {
			return optionf("credential %q given twice", c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

// place gives one credential its natural delivery on the target. A
// non-nil *LimitError means the target cannot carry it that way; with
// OverflowChannel a credential (not an extra) then goes by channel.
func (o Options) place(c Input, extra bool) (Item, *LimitError) {
	prefix := o.Mode.Prefix()
	if extra && c.Name != ManifestName {
		prefix = oemstring.PrefixBinary
	}
	smbiosItem := func(carrier Carrier) Item {
		return Item{Name: c.Name, Size: c.Size, Secret: c.Secret, Extra: extra, Delivery: DeliverySMBIOS,
			Carrier: carrier, Prefix: prefix, Encoded: oemstring.FormattedLen(prefix, c.Name, c.Size)}
	}
	switch o.Hypervisor {
	case QEMU:
		// Inline applies to credentials only: the manifest lists digests
		// of the secrets, which a file keeps away from other users.
		if !extra && (o.Inline && !c.Secret || o.InlineSecrets) {
			return smbiosItem(CarrierArgv), nil
		}
		return smbiosItem(CarrierFile), nil
	case QEMUMicrovm:
		it := Item{Name: c.Name, Size: c.Size, Secret: c.Secret, Extra: extra, Delivery: DeliveryFwCfg, Carrier: CarrierFile, Encoded: c.Size}
		if n := len(FwCfgPrefix) + len(c.Name); n > MaxFwCfgPath {
			return it, &LimitError{Name: c.Name, Size: c.Size, Err: ErrFwCfgName,
				Detail: fmt.Sprintf("fw_cfg name %s%s is %d bytes, over QEMU's %d-byte limit: the name is %d bytes and fw_cfg allows %d",
					FwCfgPrefix, c.Name, n, MaxFwCfgPath, len(c.Name), MaxFwCfgName),
				Hint: "use --hypervisor qemu with -machine q35 (SMBIOS has no such limit), a shorter name, or --overflow channel"}
		}
		return it, nil
	case CloudHypervisor:
		if o.CHAPI {
			return smbiosItem(CarrierAPI), nil
		}
		if c.Secret {
			if extra {
				return toChannel(smbiosItem(CarrierChannel),
					"holds a digest of every value, which must not go on cloud-hypervisor's command line; the host's session carries it"), nil
			}
			return toChannel(smbiosItem(CarrierChannel),
				"secret: cloud-hypervisor's command line is readable by every local user (add --ch-api SOCKET to pass secrets through its API instead)"), nil
		}
		if bad := chUnsafe(c.Name); bad != "" {
			return toChannel(smbiosItem(CarrierChannel), ""), &LimitError{Name: c.Name, Size: c.Size, Err: ErrNotCarried,
				Detail: "the name " + bad + ", which cloud-hypervisor's --platform oem_strings parser mangles",
				Hint:   "rename it, add --ch-api SOCKET, or use --overflow channel"}
		}
		return smbiosItem(CarrierArgv), nil
	case Firecracker:
		return toChannel(smbiosItem(CarrierChannel), "firecracker has no SMBIOS or fw_cfg"), nil
	default: // DMI
		return smbiosItem(CarrierTable), nil
	}
}

// countCredentials is "1 credential goes" or "N credentials go".
func countCredentials(n int) string {
	if n == 1 {
		return "1 credential goes"
	}
	return fmt.Sprintf("%d credentials go", n)
}

// chUnsafe says what in name cloud-hypervisor's option parser would split
// or strip (option_parser split_commas and StringList::from_str), or "".
// Base64 values and the prefixes are safe; only names can carry these.
func chUnsafe(name string) string {
	if i := strings.IndexAny(name, `,[]"`); i >= 0 {
		return fmt.Sprintf("contains %q", name[i])
	}
	if strings.TrimSpace(name) != name {
		return "starts or ends with white space"
	}
	return ""
}

func toChannel(it Item, reason string) Item {
	it.Delivery, it.Carrier, it.Prefix, it.Encoded, it.Reason = DeliveryChannel, CarrierChannel, "", it.Size, reason
	return it
}

// violation is the first aggregate limit a set of items breaks.
type violation struct {
	err *LimitError
	// candidate says which items moving to the channel would help, and
	// what each would free.
	candidate func(Item) (int, bool)
	// moved is the Reason an item moved for this limit gets.
	moved string
}

const overflowHint = "add --overflow channel to send what does not fit in the host's session (vmcred-host push or run), or pass fewer or smaller credentials"

// violation checks the aggregate limits in order and returns the first
// broken, naming the first item (in plan order) that crosses it.
func (o Options) violation(items []Item) *violation {
	firmware := func(it Item) bool { return it.Delivery == DeliverySMBIOS || it.Delivery == DeliveryFwCfg }
	isSMBIOS := func(it Item) bool { return it.Delivery == DeliverySMBIOS }
	isFwCfg := func(it Item) bool { return it.Delivery == DeliveryFwCfg }
	movable := func(pred func(Item) bool, cost func(Item) int) func(Item) (int, bool) {
		return func(it Item) (int, bool) { return cost(it), !it.Extra && pred(it) }
	}
	size := func(it Item) int { return it.Size }
	encoded := func(it Item) int { return it.Encoded }

	// systemd's shared budget for all firmware imports of a boot.
	total := 0
	for _, it := range items {
		if !firmware(it) {
			continue
		}
		total += it.Size
		if total > credential.MaxTotalSize {
			return &violation{
				err: &LimitError{Name: it.Name, Size: it.Size, Err: ErrTotalTooLarge, Hint: overflowHint,
					Detail: fmt.Sprintf("takes the firmware credentials to %d bytes, over systemd's %d-byte total (CREDENTIALS_TOTAL_SIZE_MAX)", total, credential.MaxTotalSize)},
				candidate: movable(firmware, size),
				moved:     fmt.Sprintf("overflow: firmware credentials over systemd's %d-byte total", credential.MaxTotalSize),
			}
		}
	}

	n := 0
	for _, it := range items {
		if !isSMBIOS(it) {
			continue
		}
		n++
		if n > MaxStrings {
			return &violation{
				err: &LimitError{Name: it.Name, Size: it.Size, Err: ErrTooManyStrings, Hint: overflowHint,
					Detail: fmt.Sprintf("is OEM string %d, over the limit of %d strings in the one type-11 structure the hypervisor builds (its count is a u8)", n, MaxStrings)},
				candidate: movable(isSMBIOS, encoded),
				moved:     fmt.Sprintf("overflow: over %d OEM strings", MaxStrings),
			}
		}
	}

	limit := smbios.MaxTableSize - o.SMBIOSReserve
	table := tableBase
	for _, it := range items {
		if !isSMBIOS(it) {
			continue
		}
		table += it.Encoded + 1
		if table > limit {
			return &violation{
				err: &LimitError{Name: it.Name, Size: it.Size, Err: ErrTableTooLarge, Hint: overflowHint,
					Detail: fmt.Sprintf("as an OEM string of %d bytes takes the SMBIOS table to %d bytes, over the limit of %d (%d for the 32-bit entry point minus %d reserved for the hypervisor's own structures)",
						it.Encoded, table, limit, smbios.MaxTableSize, o.SMBIOSReserve)},
				candidate: movable(isSMBIOS, encoded),
				moved:     fmt.Sprintf("overflow: SMBIOS table over %d bytes", limit),
			}
		}
	}

	n = 0
	for _, it := range items {
		if !isFwCfg(it) {
			continue
		}
		n++
		if n > o.MaxFwCfgFiles {
			return &violation{
				err: &LimitError{Name: it.Name, Size: it.Size, Err: ErrTooManyFwCfg, Hint: overflowHint,
					Detail: fmt.Sprintf("is fw_cfg file %d, over vmcred's cap of %d (QEMU's %d fw_cfg slots are shared with its own files, and running out aborts QEMU)", n, o.MaxFwCfgFiles, MaxFwCfgSlots)},
				candidate: movable(isFwCfg, size),
				moved:     fmt.Sprintf("overflow: over %d fw_cfg files", o.MaxFwCfgFiles),
			}
		}
	}
	return nil
}

// tableBase is the size of smbios.BuildQEMUTable's output before strings:
// the type-11 header and count byte, the string set's final NUL, and the
// type-127 structure (header and double NUL). Each string adds its length
// plus its NUL.
const tableBase = smbios.HeaderLen + 1 + 1 + smbios.HeaderLen + 2

// tableSize is len(smbios.BuildQEMUTable(strs)) for strings of the given
// lengths.
func tableSize(lens []int) int {
	if len(lens) == 0 {
		return smbios.HeaderLen + 2
	}
	n := tableBase
	for _, l := range lens {
		n += l + 1
	}
	return n
}

// largest returns the index of the movable item with the highest cost,
// the later one on ties, or -1.
func largest(items []Item, candidate func(Item) (int, bool)) int {
	best, bestCost := -1, -1
	for i, it := range items {
		if c, ok := candidate(it); ok && c >= bestCost {
			best, bestCost = i, c
		}
	}
	return best
}

func (o Options) usage(items []Item) Usage {
	u := Usage{
		SMBIOSStringsLimit: MaxStrings,
		SMBIOSTableLimit:   smbios.MaxTableSize - o.SMBIOSReserve,
		SMBIOSReserve:      o.SMBIOSReserve,
		FirmwareLimit:      credential.MaxTotalSize,
	}
	if o.Hypervisor == QEMUMicrovm || o.Hypervisor == QEMU {
		u.FwCfgFilesLimit = o.MaxFwCfgFiles
	}
	var lens []int
	for _, it := range items {
		switch it.Delivery {
		case DeliverySMBIOS:
			lens = append(lens, it.Encoded)
			u.SMBIOSStringData += it.Encoded + 1
			u.FirmwareBytes += it.Size
		case DeliveryFwCfg:
			u.FwCfgFiles++
			u.FirmwareBytes += it.Size
		case DeliveryChannel:
			u.ChannelBytes += it.Size
		}
	}
	u.SMBIOSStrings = len(lens)
	if len(lens) > 0 {
		u.SMBIOSTable = tableSize(lens)
	}
	return u
}

func (o Options) warnings(items []Item, u Usage) []Warning {
	ws := []Warning{}
	for _, it := range items {
		if it.Overflowed {
			ws = append(ws, Warning{Code: WarnOverflowed, Name: it.Name,
				Message: fmt.Sprintf("credential %q (%d bytes) goes by channel: %s", it.Name, it.Size, it.Reason)})
		}
	}
	for _, it := range items {
		if it.Secret && it.Carrier == CarrierArgv {
			ws = append(ws, Warning{Code: WarnInlineSecret, Name: it.Name,
				Message: fmt.Sprintf("secret credential %q goes on the hypervisor's command line, where every local user can read it in /proc/PID/cmdline", it.Name)})
		}
	}
	if o.Mode == Verified && u.FwCfgFiles > 0 {
		ws = append(ws, Warning{Code: WarnFwCfgImported,
			Message: fmt.Sprintf("%s by fw_cfg, which has no vmcred namespace: stock systemd imports them too, so unverified copies land in /run/credentials/@system (use --hypervisor qemu with -machine q35, or the channel, to keep them verified-only)", countCredentials(u.FwCfgFiles))})
	}
	if o.Mode == Systemd && u.SMBIOSStringData > SystemdWindow {
		data := 0
		for _, it := range items {
			if it.Delivery != DeliverySMBIOS {
				continue
			}
			data += it.Encoded + 1
			if data > SystemdWindow {
				ws = append(ws, Warning{Code: WarnSystemdWindow, Name: it.Name,
					Message: fmt.Sprintf("the OEM strings hold %d bytes of string data, but systemd 252 to 256 read only the first %d bytes of the type-11 structure: its own import would cut or drop credential %q (%d bytes, ending at byte %d) and every string after it (the vmcred agent reads the whole table; systemd 257 and later read it all); keep the strings under %d bytes or use --mode verified",
						u.SMBIOSStringData, SystemdWindow, it.Name, it.Size, data, SystemdWindow)})
				break
			}
		}
	}
	return ws
}
