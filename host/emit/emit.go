// Package emit turns a plan (host/plan) and the credential values into what
// a hypervisor is started with: command-line arguments, 0400 payload files
// in a private runtime directory, cloud-hypervisor's vm.create request, or
// a whole DMI table; and describes all of it as a JSON document for
// launchers and Nix.
//
// Secrets never appear in arguments (unless the plan was made with
// InlineSecrets on explicit request), in the JSON document, or in errors:
// they go only into payload files, the API request body, and the DMI table
// file. Build is pure and deterministic, so arguments can be compared with
// golden files; Result.Write then creates the files, all or nothing.
//
// This package is for host code (host/cmd/vmcred-host and host/...). It does
// not log.
package emit

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// File modes.
const (
	// PayloadMode is the mode of every file that holds a value.
	PayloadMode fs.FileMode = 0o400
	// DirMode is the mode of a runtime directory Write creates.
	DirMode fs.FileMode = 0o700
)

// File roles.
const (
	RoleSMBIOS = "smbios" // an OEM string for -smbios type=11,path=
	RoleFwCfg  = "fwcfg"  // raw bytes for -fw_cfg name=...,file=
	RoleCHAPI  = "ch-api" // the body of cloud-hypervisor's PUT vm.create
	RoleDMI    = "dmi"    // a DMI table (pack --hypervisor dmi --out)
)

// CHCreateBody is the file name of the vm.create request body in the
// runtime directory.
const CHCreateBody = "ch-vm-create.json"

// Errors.
var (
	// ErrValue means the values do not match the plan (missing, or a
	// different size): a bug in the caller, never the user's input.
	ErrValue = errors.New("values do not match the plan")
	// ErrOption means the emitter options are unusable (exit code 2).
	ErrOption = errors.New("invalid emitter option")
)

// Values maps each planned name (credentials and extra strings) to its value.
type Values map[string]credential.Secret

// Options are what the emitters need besides the plan and the values.
type Options struct {
	// RuntimeDir is the absolute directory for payload files. Build only
	// names files in it; Write creates it (0700) if it does not exist.
	RuntimeDir string
	// Out is the DMI table file for plan.DMI.
	Out string
	// CHAPISocket is cloud-hypervisor's API socket, for plans made with
	// CHAPI.
	CHAPISocket string
	// CHConfig is an optional VmConfig JSON object (kernel, memory, disks,
	// ...) that the vm.create body is built on: oem_strings are appended
	// to its platform section. Without it the body holds the platform
	// section only.
	CHConfig []byte
}

// File is one file Write creates. It holds no value.
type File struct {
	Path string      `json:"path"`
	Mode fs.FileMode `json:"-"`
	// Name is the credential the file carries; "" for the API body and the
	// DMI table, which carry several.
	Name string `json:"name,omitempty"`
	Role string `json:"role"`
}

// MarshalJSON adds the mode as an octal string, e.g. "0400".
func (f File) MarshalJSON() ([]byte, error) {
	type plain File
	return marshalJSON(struct {
		plain
		Mode string `json:"mode"`
	}{plain(f), fmt.Sprintf("%04o", f.Mode.Perm())})
}

// APIRequest is what `run` sends to cloud-hypervisor's API socket: the body
// file as PUT /api/v1/vm.create, then PUT /api/v1/vm.boot.
type APIRequest struct {
	Socket   string   `json:"socket"`
	BodyFile string   `json:"body_file"`
	Calls    []string `json:"calls"`
}

// Result is what an emitter produced: arguments to append to the
// hypervisor's command line, and the files Write creates.
type Result struct {
	Plan       *plan.Plan
	RuntimeDir string
	Args       []string
	Files      []File
	API        *APIRequest
	// payloads[i] is the content of Files[i].
	payloads []credential.Secret
	// state of Write, for Remove.
	written    []string
	createdDir bool
}

// Build runs the emitter for p.Hypervisor. It checks that every planned
// item has a value of the planned size, and refuses options the target
// needs and lacks. It writes nothing.
func Build(p *plan.Plan, vals Values, opts Options) (*Result, error) {
	for _, it := range p.Items {
		v, ok := vals[it.Name]
		if !ok {
			return nil, fmt.Errorf("credential %q: %w: no value", it.Name, ErrValue)
		}
		if v.Len() != it.Size {
			return nil, fmt.Errorf("credential %q: %w: planned %d bytes, value has %d", it.Name, ErrValue, it.Size, v.Len())
		}
	}
	r := &Result{Plan: p, RuntimeDir: opts.RuntimeDir, Args: []string{}, Files: []File{}}
	needDir := false
	for _, it := range p.Items {
		if it.Carrier == plan.CarrierFile || it.Carrier == plan.CarrierAPI {
			needDir = true
		}
	}
	if needDir {
		if err := checkDir(opts.RuntimeDir); err != nil {
			return nil, err
		}
	}
	var err error
	switch p.Hypervisor {
	case plan.QEMU, plan.QEMUMicrovm:
		err = r.qemu(vals)
	case plan.CloudHypervisor:
		err = r.cloudHypervisor(vals, opts)
	case plan.Firecracker:
		// Everything goes in the host's session: nothing to add.
	case plan.DMI:
		err = r.dmi(vals, opts)
	default:
		err = fmt.Errorf("%w: no emitter for hypervisor %q", ErrOption, p.Hypervisor)
	}
	if err != nil {
		r.wipe()
		return nil, err
	}
	return r, nil
}

func checkDir(dir string) error {
	switch {
	case dir == "":
		return fmt.Errorf("%w: no runtime directory for the payload files (give --runtime-dir)", ErrOption)
	case !filepath.IsAbs(dir):
		return fmt.Errorf("%w: runtime directory %s is not an absolute path", ErrOption, dir)
	case filepath.Clean(dir) != dir:
		return fmt.Errorf("%w: runtime directory %s is not a clean path (want %s)", ErrOption, dir, filepath.Clean(dir))
	}
	return nil
}

// addFile records a payload file in the runtime directory.
func (r *Result) addFile(base, name, role string, content credential.Secret) string {
	path := filepath.Join(r.RuntimeDir, base)
	r.Files = append(r.Files, File{Path: path, Mode: PayloadMode, Name: name, Role: role})
	r.payloads = append(r.payloads, content)
	return path
}

// oemString formats an item's OEM string.
func oemString(it plan.Item, v credential.Secret) (credential.Secret, error) {
	s, err := oemstring.Format(it.Prefix, it.Name, v)
	if err != nil {
		return credential.Secret{}, fmt.Errorf("credential %q: %w", it.Name, err)
	}
	return s, nil
}

// EscapeComma doubles every ',' as QEMU's option parser (QemuOpts) needs in
// a value: `-smbios type=11,value=a,,b` carries the string "a,b".
func EscapeComma(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// qemu emits -smbios type=11 and -fw_cfg options in plan order.
func (r *Result) qemu(vals Values) error {
	for i, it := range r.Plan.Items {
		v := vals[it.Name]
		switch {
		case it.Delivery == plan.DeliverySMBIOS && it.Carrier == plan.CarrierFile:
			s, err := oemString(it, v)
			if err != nil {
				return err
			}
			// QEMU's path= takes the content verbatim (a newline would be
			// part of the value) and rejects a NUL; base64 has neither.
			path := r.addFile(fmt.Sprintf("oem-%03d", i), it.Name, RoleSMBIOS, s)
			r.Args = append(r.Args, "-smbios", "type=11,path="+EscapeComma(path))
		case it.Delivery == plan.DeliverySMBIOS && it.Carrier == plan.CarrierArgv:
			s, err := oemString(it, v)
			if err != nil {
				return err
			}
			r.Args = append(r.Args, "-smbios", "type=11,value="+EscapeComma(string(s.Reveal())))
			s.Wipe()
		case it.Delivery == plan.DeliveryFwCfg && it.Carrier == plan.CarrierFile:
			if n := len(plan.FwCfgPrefix) + len(it.Name); n > plan.MaxFwCfgPath {
				return fmt.Errorf("credential %q: fw_cfg name %s%s is %d bytes, over QEMU's %d-byte limit: %w",
					it.Name, plan.FwCfgPrefix, it.Name, n, plan.MaxFwCfgPath, plan.ErrFwCfgName)
			}
			// fw_cfg file= is read with g_file_get_contents: raw bytes,
			// binary-safe, the value itself (no base64). The payload is
			// the caller's value, not a copy: a copy runs through the
			// CPU's vector registers (memmove), which a signal arriving
			// then saves on the thread's signal stack, where the bytes
			// outlive every Wipe (issue 17, finding 6). Wipe clears the
			// caller's value too, which the caller wipes anyway.
			path := r.addFile(fmt.Sprintf("fwcfg-%03d", i), it.Name, RoleFwCfg, v)
			r.Args = append(r.Args, "-fw_cfg", "name="+EscapeComma(plan.FwCfgPrefix+it.Name)+",file="+EscapeComma(path))
		case it.Delivery == plan.DeliveryChannel:
		default:
			return fmt.Errorf("credential %q: %w: %s by %s is not a QEMU delivery", it.Name, ErrOption, it.Delivery, it.Carrier)
		}
	}
	return nil
}

// dmi builds the whole table for the plan's SMBIOS items.
func (r *Result) dmi(vals Values, opts Options) error {
	if opts.Out == "" {
		return fmt.Errorf("%w: --hypervisor dmi needs --out FILE for the table", ErrOption)
	}
	var strs []string
	for _, it := range r.Plan.Items {
		switch it.Delivery {
		case plan.DeliverySMBIOS:
			s, err := oemString(it, vals[it.Name])
			if err != nil {
				return err
			}
			strs = append(strs, string(s.Reveal()))
			s.Wipe()
		case plan.DeliveryChannel:
		default:
			return fmt.Errorf("credential %q: %w: %s is not a DMI table delivery", it.Name, ErrOption, it.Delivery)
		}
	}
	table, err := smbios.BuildQEMUTable(strs)
	if err != nil {
		return fmt.Errorf("build dmi table for %s: %w", opts.Out, err)
	}
	r.Files = append(r.Files, File{Path: opts.Out, Mode: PayloadMode, Role: RoleDMI})
	r.payloads = append(r.payloads, credential.NewSecret(table))
	return nil
}

// wipe clears every payload held in memory.
func (r *Result) wipe() {
	for _, p := range r.payloads {
		p.Wipe()
	}
}

// Wipe clears the payloads held in memory. Call it once Write is done.
func (r *Result) Wipe() { r.wipe() }

// APIBody returns the vm.create request body, or an empty Secret when the
// plan uses no API. It is the Result's own copy: do not use it after Wipe.
func (r *Result) APIBody() credential.Secret {
	for i, f := range r.Files {
		if f.Role == RoleCHAPI {
			return r.payloads[i]
		}
	}
	return credential.Secret{}
}
