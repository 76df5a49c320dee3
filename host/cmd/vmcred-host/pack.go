package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/vmcred/vmcred/host/access"
	"github.com/vmcred/vmcred/host/emit"
	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/host/push"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/logging"
	"github.com/vmcred/vmcred/shared/manifest"
)

// Outputs of pack besides the hypervisor targets.
const (
	hvJSON = "json"
	hvDMI  = "dmi"
)

// maxKeyFile and maxCHConfig cap what pack reads from --sign-key and
// --ch-config.
const (
	maxKeyFile  = 4096
	maxCHConfig = emit.MaxCHConfig
)

// packFlags are the flags of pack, also taken by run.
type packFlags struct {
	vm, hypervisor, target        string
	mode, overflow                string
	signKey, runtimeDir, out      string
	notifySocket, chAPI, chConfig string
	inline, inlineSecrets, print0 bool
	smbiosReserve                 int
	// lifetime is how long the manifest is valid (its not-after); 0 sets
	// none.
	lifetime time.Duration
	src      source.Flags
	// forRun is set for run's flags, which leave out pack's outputs.
	forRun bool
	// owner is --owner: the user the payload files are for.
	owner string
	// sessionValues is set by run with --connect: pack then keeps copies
	// of the values for the session. Without it no copy is made at all
	// (a copy passes through vector registers that a signal can spill
	// where Wipe does not reach; issue 17, finding 6).
	sessionValues bool
}

// DefaultLifetime is pack's --lifetime: how long a manifest stays valid
// after it is issued. Long, because QEMU keeps a VM's SMBIOS tables and
// fw_cfg files across a reboot inside the guest: the agent then reads the
// same manifest again, and a short lifetime would fail the boot of a VM
// that reboots after it (the load fails loudly, naming the expiry; a
// restart of the VM from the host re-packs). It still stops a pack from a
// month ago from being accepted, e.g. a DMI table or payload kept
// somewhere. --lifetime 0 sets no not-after.
const DefaultLifetime = 30 * 24 * time.Hour

// register adds pack's flags to fs; forRun leaves out what only pack
// does (json and dmi output, --out, --target, --print0, --owner), since
// run starts a hypervisor and prints nothing.
func (f *packFlags) register(fs *pflag.FlagSet, forRun bool) {
	f.forRun = forRun
	fs.StringVar(&f.vm, "vm", "", "the VM's `NAME` (required)")
	if forRun {
		fs.StringVar(&f.hypervisor, "hypervisor", "", "the `HYPERVISOR` COMMAND is: qemu (q35/pc), qemu-microvm, cloud-hypervisor or firecracker (required)")
	} else {
		fs.StringVar(&f.hypervisor, "hypervisor", "", "`TARGET`: qemu (q35/pc), qemu-microvm, cloud-hypervisor, firecracker, json (the plan as JSON) or dmi (a DMI table file) (required)")
	}
	f.src.Register(fs)
	fs.StringVar(&f.mode, "mode", string(plan.Verified), "the OEM string namespace, `MODE`: verified (only the vmcred agent imports credentials) or systemd (stock systemd imports them too)")
	fs.StringVar(&f.signKey, "sign-key", "", "sign the manifest with the Ed25519 key in `FILE` (from vmcred-host keygen); without it the manifest has digests only")
	fs.StringVar(&f.runtimeDir, "runtime-dir", "", "write payload files (mode 0400) in `DIR`, created 0700 if missing; default $RUNTIME_DIRECTORY, else a new private directory under $TMPDIR")
	if !forRun {
		fs.StringVar(&f.out, "out", "", "dmi: write the DMI table to `FILE`; json: write the plan to FILE instead of stdout (json writes no payload file: the plan names where pack would write them)")
	}
	fs.StringVar(&f.notifySocket, "notify-socket", "", "add vmm.notify_socket=`ADDR` (vsock-stream:2:PORT) so guest PID 1 reports its boot to vmcred-host serve; not for firecracker, which has no firmware to carry it")
	fs.StringVar(&f.overflow, "overflow", string(plan.OverflowFail), "`POLICY` for what does not fit the firmware limits: fail, or channel (moves the largest first to the host's session: vmcred-host push or run)")
	fs.BoolVar(&f.inline, "inline", false, "qemu: put non-secret OEM strings on the command line (value=) instead of in files")
	fs.BoolVar(&f.inlineSecrets, "inline-secrets", false, "qemu: put secret OEM strings on the command line too, where every local user can read them in /proc/PID/cmdline (not recommended)")
	if !forRun {
		fs.StringVar(&f.owner, "owner", "", "give the payload files (and a runtime directory pack creates) to `USER`, the user the hypervisor runs as; pack must run as root for it. Without it pack warns when "+access.DefaultUser+" could not read them")
		fs.BoolVar(&f.print0, "print0", false, "end each printed argument with a NUL instead of a newline (for mapfile -d '')")
	}
	fs.StringVar(&f.chAPI, "ch-api", "", "cloud-hypervisor: pass every OEM string, secrets included, through its REST API on `SOCKET` (vm.create) instead of the command line and the channel")
	fs.StringVar(&f.chConfig, "ch-config", "", "cloud-hypervisor with --ch-api: the VmConfig JSON `FILE` (kernel, memory, disks) to add the OEM strings to")
	if !forRun {
		fs.StringVar(&f.target, "target", string(plan.QEMU), "with --hypervisor json: the `HYPERVISOR` the plan is for")
	}
	fs.DurationVar(&f.lifetime, "lifetime", DefaultLifetime, "the firmware manifest is valid for this `DURATION` after it is issued (its not-after; a guest that reboots with the same firmware after it fails its load), 0 for no limit")
	fs.IntVar(&f.smbiosReserve, "smbios-reserve", -1, fmt.Sprintf("`BYTES` of the 65535-byte SMBIOS table left for the hypervisor's own structures (default %d; 0 for dmi)", plan.DefaultSMBIOSReserve))
}

const packUsage = "vmcred-host pack --vm NAME --hypervisor TARGET [source flags] [flags]"

// packed is what pack produced.
type packed struct {
	plan   *plan.Plan
	result *emit.Result
	// output is "args", hvJSON or hvDMI.
	output string
	// tempDir is the runtime directory pack made with os.MkdirTemp, if it
	// did, for run to remove.
	tempDir string
	// session lists every credential with its planned delivery, for run's
	// session (values for the channel ones). Wipe with wipeSession.
	session []push.Credential
}

func (d deps) runPack(_ context.Context, env *cli.Env, args []string) error {
	var f packFlags
	fs := cli.NewFlagSet("pack")
	f.register(fs, false)
	if err := cli.Parse(env, fs, packUsage, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %d of %d bytes (flags only; see --help)", 1, len(fs.Arg(0)))
	}
	pk, err := d.pack(env, &f)
	if err != nil {
		return err
	}
	defer pk.result.Wipe()
	defer pk.wipeSession()
	if pk.output != hvJSON {
		if f.owner != "" {
			if err := d.handOver(f.owner, pk.result, pk.tempDir != "" || pk.result.CreatedDir()); err != nil {
				pk.result.Remove()
				pk.removeTemp()
				return err
			}
		}
		d.warnUnreadable(env, f.owner, pk.result)
	}
	if n := pk.sessionCount(); n > 0 {
		env.Log.Info(fmt.Sprintf("vm %s: %s in the host's session, not in firmware: run vmcred-host push --vm %s --connect ADDR --sign-key FILE with the same sources once the VM runs", f.vm, countGo(n), f.vm))
	}
	if err := pk.print(env, &f); err != nil {
		pk.result.Remove()
		if pk.tempDir != "" {
			os.Remove(pk.tempDir)
		}
		return err
	}
	return nil
}

// print writes pack's output: the arguments, the JSON plan, or (dmi)
// nothing but a log line.
func (pk *packed) print(env *cli.Env, f *packFlags) error {
	switch pk.output {
	case hvJSON:
		doc, err := emit.NewDocument(pk.result)
		if err != nil {
			return cli.WithCode(cli.ExitUsage, err)
		}
		b, err := doc.MarshalIndent()
		if err != nil {
			return err
		}
		if f.out != "" {
			// 0600: the plan names the credentials and their sizes; only
			// its owner needs it.
			if err := emit.WriteFile(f.out, b, 0o600); err != nil {
				return cli.WithCode(cli.ExitIO, err)
			}
			return nil
		}
		_, err = env.Stdout.Write(b)
		return err
	case hvDMI:
		env.Log.Info(fmt.Sprintf("wrote DMI table %s: %d bytes, %d OEM strings", f.out, pk.plan.Usage.SMBIOSTable, pk.plan.Usage.SMBIOSStrings))
		return nil
	}
	if err := emit.WriteArgs(env.Stdout, pk.result.Args, f.print0); err != nil {
		return cli.WithCode(cli.ExitIO, fmt.Errorf("print arguments: %w", err))
	}
	return nil
}

// pack collects, plans, signs and writes; it prints nothing. On error
// nothing is left on disk.
func (d deps) pack(env *cli.Env, f *packFlags) (*packed, error) {
	pk := &packed{output: "args"}
	opts, err := f.planOptions(pk)
	if err != nil {
		return nil, err
	}
	specs, err := f.src.Specs()
	if err != nil {
		return nil, withCode(err)
	}
	creds, warnings, err := source.CollectUpTo(specs, d.source, manifest.MaxEntrySize)
	if err != nil {
		return nil, withCode(err)
	}
	defer func() {
		for _, c := range creds {
			c.Value.Wipe()
		}
	}()
	for _, w := range warnings {
		env.Log.Warn(w.String())
	}
	if err := checkCollected(env, creds, len(specs) == 0); err != nil {
		return nil, err
	}

	if f.lifetime < 0 || (f.lifetime > 0 && f.lifetime < time.Second) {
		return nil, cli.Usagef("--lifetime must be 0 (no limit) or at least 1s: a manifest's times are whole seconds")
	}
	params := emit.ManifestParams{VM: f.vm, IssuedAt: d.now()}
	if f.lifetime > 0 {
		params.NotAfter = params.IssuedAt.Add(f.lifetime)
	}
	if f.signKey != "" {
		if params.Key, err = loadKey(f.signKey); err != nil {
			return nil, err
		}
		defer clear(params.Key)
	}
	var chConfig []byte
	if f.chConfig != "" {
		if chConfig, err = readCapped(f.chConfig, maxCHConfig); err != nil {
			return nil, cli.WithCode(cli.ExitIO, fmt.Errorf("--ch-config: %w", err))
		}
	}

	notifyValue, err := f.notifyCredential(opts.Hypervisor, creds)
	if err != nil {
		return nil, err
	}

	vals := emit.Values{}
	var inputs []plan.Input
	var mcreds []emit.ManifestCredential
	for _, c := range creds {
		vals[c.Name] = c.Value
		inputs = append(inputs, plan.Input{Name: c.Name, Size: c.Value.Len(), Secret: c.Secret})
		mcreds = append(mcreds, emit.ManifestCredential{Name: c.Name, Value: c.Value, Secret: c.Secret})
	}
	var extras []plan.Input
	if notifyValue.Len() > 0 {
		// Listed in the manifest like any credential, so the agent
		// verifies it; an extra string, so it keeps systemd's prefix.
		vals[NotifySocketName] = notifyValue
		extras = append(extras, plan.Input{Name: NotifySocketName, Size: notifyValue.Len()})
		mcreds = append(mcreds, emit.ManifestCredential{Name: NotifySocketName, Value: notifyValue})
	}
	// The manifest's length does not depend on the deliveries, so a draft
	// tells the planner what to reserve.
	draft, err := emit.BuildManifest(params, mcreds, nil)
	if err != nil {
		return nil, cli.WithCode(cli.ExitUsage, err)
	}
	// The manifest holds a SHA-256 of every value: as secret as the
	// values whenever a value can be guessed, so it is planned as a
	// secret (never on a command line).
	opts.Extra = append([]plan.Input{{Name: plan.ManifestName, Size: draft.Len(), Secret: true}}, extras...)
	draft.Wipe()

	p, err := plan.New(inputs, opts)
	if err != nil {
		return nil, withCode(err)
	}
	pk.plan = p
	final, err := emit.BuildManifest(params, mcreds, emit.Deliveries(p))
	if err != nil {
		return nil, cli.WithCode(cli.ExitUsage, err)
	}
	defer final.Wipe()
	if final.Len() != opts.Extra[0].Size {
		return nil, fmt.Errorf("manifest is %d bytes, planned %d (a bug: its length must not depend on the deliveries)", final.Len(), opts.Extra[0].Size)
	}
	vals[plan.ManifestName] = final

	eo := emit.Options{Out: f.out, CHConfig: chConfig}
	if f.chAPI != "" {
		if eo.CHAPISocket, err = filepath.Abs(f.chAPI); err != nil {
			return nil, cli.WithCode(cli.ExitUsage, fmt.Errorf("--ch-api: %w", err))
		}
	}
	if f.chAPI != "" && f.chConfig == "" {
		env.Log.Warn("--ch-api without --ch-config: the vm.create body holds only the platform's OEM strings, and cloud-hypervisor needs a kernel, memory and disks too; give the VmConfig with --ch-config FILE")
	}
	if needsDir(p) {
		if pk.output == hvJSON {
			eo.RuntimeDir = planRuntimeDir(env, f)
		} else if eo.RuntimeDir, pk.tempDir, err = runtimeDir(env, f); err != nil {
			return nil, err
		}
	}
	res, err := emit.Build(p, vals, eo)
	if err != nil {
		pk.removeTemp()
		return nil, withCode(err)
	}
	if pk.output == hvJSON {
		// The JSON plan describes; it writes nothing.
		pk.result = res
		return pk, nil
	}
	if err := res.Write(); err != nil {
		res.Wipe()
		pk.removeTemp()
		return nil, withCode(err)
	}
	pk.result = res
	pk.session = sessionCredentials(p, creds, notifyValue, f.sessionValues)
	logPlan(env.Log, p, res)
	return pk, nil
}

func (pk *packed) removeTemp() {
	if pk.tempDir != "" {
		os.Remove(pk.tempDir)
		pk.tempDir = ""
	}
}

// planOptions checks the flags that need no I/O and returns the planner's
// options; it sets pk.output.
func (f *packFlags) planOptions(pk *packed) (plan.Options, error) {
	var o plan.Options
	if f.vm == "" {
		return o, cli.Usagef("--vm NAME is required")
	}
	if err := checkVMName(f.vm); err != nil {
		return o, err
	}
	target := f.hypervisor
	switch f.hypervisor {
	case "":
		return o, cli.Usagef("--hypervisor is required (%s)", f.hypervisorChoices())
	case hvJSON:
		pk.output, target = hvJSON, f.target
		if target == hvJSON || target == hvDMI {
			return o, cli.Usagef("--target %s: the JSON plan is for a hypervisor (qemu, qemu-microvm, cloud-hypervisor or firecracker)", target)
		}
	case hvDMI:
		pk.output = hvDMI
	}
	hv, err := plan.ParseHypervisor(target)
	if err != nil {
		if target == f.hypervisor {
			return o, cli.Usagef("--hypervisor: unknown hypervisor %q (want %s)", clipArg(target), f.hypervisorChoices())
		}
		return o, cli.WithCode(cli.ExitUsage, fmt.Errorf("--target: %w", err))
	}
	mode, err := plan.ParseMode(f.mode)
	if err != nil {
		return o, cli.WithCode(cli.ExitUsage, err)
	}
	overflow, err := plan.ParseOverflow(f.overflow)
	if err != nil {
		return o, cli.WithCode(cli.ExitUsage, err)
	}
	switch {
	case pk.output == hvDMI && f.out == "":
		return o, cli.Usagef("--hypervisor dmi needs --out FILE for the table")
	case pk.output == "args" && f.out != "":
		return o, cli.Usagef("--out applies to --hypervisor dmi and json only")
	case f.chAPI != "" && hv != plan.CloudHypervisor:
		return o, cli.Usagef("--ch-api applies to cloud-hypervisor only")
	case f.chConfig != "" && f.chAPI == "":
		return o, cli.Usagef("--ch-config needs --ch-api SOCKET")
	case f.inlineSecrets && pk.output == hvJSON:
		return o, cli.Usagef("--inline-secrets cannot go with --hypervisor json: the JSON plan never holds values")
	}
	if f.notifySocket != "" {
		if _, err := address.Parse(f.notifySocket); err != nil {
			return o, cli.Usagef("--notify-socket: %v", err)
		}
	}
	return plan.Options{
		VM: f.vm, Hypervisor: hv, Mode: mode, Overflow: overflow, MaxChannelSize: manifest.MaxEntrySize,
		CHAPI: f.chAPI != "", Inline: f.inline, InlineSecrets: f.inlineSecrets, SMBIOSReserve: f.smbiosReserve,
	}, nil
}

// hypervisorChoices lists what --hypervisor takes.
func (f *packFlags) hypervisorChoices() string {
	if f.forRun {
		return "qemu, qemu-microvm, cloud-hypervisor or firecracker"
	}
	return "qemu, qemu-microvm, cloud-hypervisor, firecracker, json or dmi"
}

// clipArg shortens a mistyped value for an error message.
func clipArg(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func needsDir(p *plan.Plan) bool {
	for _, it := range p.Items {
		if it.Carrier == plan.CarrierFile || it.Carrier == plan.CarrierAPI {
			return true
		}
	}
	return false
}

// checkCollected refuses what the guest could not read back and warns
// about what is probably a mistake: a name with '=' (an OEM string is
// NAME=VALUE split at the first '=', systemd's rule, so the guest would
// read another name and skip the value), and an empty secret file.
func checkCollected(env *cli.Env, creds []source.Credential, noSources bool) error {
	for _, c := range creds {
		if strings.Contains(c.Name, "=") {
			from := c.Origin.Path
			if from == "" {
				from = "--static"
			}
			return cli.Usagef("credential %q (from %s): a name may not contain '=': credentials travel as NAME=VALUE split at the first '=', so the guest could not read it back; rename it", c.Name, from)
		}
		if c.Secret && c.Value.Len() == 0 {
			env.Log.Warn(fmt.Sprintf("credential %q: %s is empty (0 bytes); the guest gets an empty credential", c.Name, c.Origin.Path))
		}
	}
	switch {
	case len(creds) > 0:
	case noSources:
		// The NixOS module packs a VM with a signing key and no
		// credentials yet: not an error, but never silent.
		env.Log.Warn("no credentials to pack (no --cred, --cred-dir, --from-credentials-directory or --static): the VM gets only the manifest")
	default:
		env.Log.Warn("the sources hold no credentials: the VM gets only the manifest")
	}
	return nil
}

// planRuntimeDir is the directory the JSON plan names for payload files,
// which it does not write: --runtime-dir or $RUNTIME_DIRECTORY as pack
// would use them, else where a packing service's RuntimeDirectory=vmcred/NAME
// would be.
func planRuntimeDir(env *cli.Env, f *packFlags) string {
	dir := f.runtimeDir
	if dir == "" && env.Getenv != nil {
		dir, _, _ = strings.Cut(env.Getenv("RUNTIME_DIRECTORY"), ":")
	}
	if dir == "" {
		return filepath.Join("/run/vmcred", sanitize(f.vm))
	}
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

// runtimeDir picks the directory for payload files: --runtime-dir, else
// the first of $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=, a
// colon-separated list), else a new private directory. It returns the
// absolute path, and the path again if it created it.
func runtimeDir(env *cli.Env, f *packFlags) (dir, created string, err error) {
	dir = f.runtimeDir
	if dir == "" && env.Getenv != nil {
		dir, _, _ = strings.Cut(env.Getenv("RUNTIME_DIRECTORY"), ":")
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "vmcred-"+sanitize(f.vm)+"-")
		if err != nil {
			return "", "", cli.WithCode(cli.ExitIO, fmt.Errorf("create a runtime directory: %w", err))
		}
		return d, d, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", cli.WithCode(cli.ExitUsage, fmt.Errorf("--runtime-dir: %w", err))
	}
	return abs, "", nil
}

// sanitize keeps a VM name's letters, digits, '-', '_' and '.' for a
// directory name pattern.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, s)
}

// loadKey reads a private key file. A key readable by group or others is
// refused: anyone who can read it can sign manifests.
func loadKey(path string) (ed25519.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, cli.WithCode(cli.ExitIO, fmt.Errorf("--sign-key: %w", err))
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, cli.WithCode(cli.ExitFailure, fmt.Errorf("--sign-key %s: mode %04o lets group or others read the signing key; chmod 0400 it", path, fi.Mode().Perm()))
	}
	b, err := readCapped(path, maxKeyFile)
	if err != nil {
		return nil, cli.WithCode(cli.ExitIO, fmt.Errorf("--sign-key: %w", err))
	}
	defer clear(b)
	key, err := manifest.ParsePrivateKey(b)
	if err != nil {
		return nil, cli.WithCode(cli.ExitUsage, fmt.Errorf("--sign-key %s: %w", path, err))
	}
	return key, nil
}

// readCapped reads a regular file of at most limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		clear(b)
		return nil, fmt.Errorf("%s is over the %d-byte limit", path, limit)
	}
	return b, nil
}

// withCode gives errors from the host packages their exit codes (DESIGN
// §7): usage 2, a limit or policy 1, anything else (a source or file that
// could not be read or written) 3.
func withCode(err error) error {
	var ee *cli.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return err
	case errors.Is(err, source.ErrUsage), errors.Is(err, plan.ErrOption), errors.Is(err, emit.ErrOption):
		return cli.WithCode(cli.ExitUsage, err)
	case errors.Is(err, plan.ErrLimit), errors.Is(err, source.ErrTooLarge):
		return cli.WithCode(cli.ExitFailure, err)
	}
	return cli.WithCode(cli.ExitIO, err)
}

// logPlan logs a summary line and every warning of the plan.
func logPlan(log *logging.Logger, p *plan.Plan, r *emit.Result) {
	counts := map[plan.Delivery]int{}
	for _, it := range p.Items {
		counts[it.Delivery]++
	}
	var parts []string
	for _, d := range []plan.Delivery{plan.DeliverySMBIOS, plan.DeliveryFwCfg, plan.DeliveryChannel} {
		if counts[d] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[d], d))
		}
	}
	msg := fmt.Sprintf("vm %s: %s (manifest included) for %s: %s", p.VM, cli.Count(len(p.Items), "credential"), p.Hypervisor, strings.Join(parts, ", "))
	if p.Usage.SMBIOSStrings > 0 {
		msg += fmt.Sprintf("; SMBIOS table %d of %d bytes", p.Usage.SMBIOSTable, p.Usage.SMBIOSTableLimit)
	}
	if len(r.Files) > 0 && r.RuntimeDir != "" {
		msg += "; files in " + r.RuntimeDir
	}
	log.Info(msg)
	for _, w := range p.Warnings {
		log.Warn(w.Message)
	}
}
