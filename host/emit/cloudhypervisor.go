package emit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/shared/credential"
)

// API calls `run` makes, in order.
const (
	CHCreatePath = "/api/v1/vm.create"
	CHBootPath   = "/api/v1/vm.boot"
)

// MaxCHConfig bounds the VmConfig JSON given with Options.CHConfig.
const MaxCHConfig = 1 << 20

// cloudHypervisor emits --platform oem_strings=[...] for the strings the
// plan puts on the command line, and the vm.create body for those it puts
// in the API request.
//
// cloud-hypervisor's option parser (option_parser, v48 and later) splits
// on ',' outside brackets and quotes, keeps '"' inside elements and strips
// leading '[' and trailing ']'; before v48 it split on every ','. OEM
// strings here are PREFIX NAME=BASE64, and the planner refuses names with
// ',', '[', ']' or '"' on this carrier, so nothing is mangled.
func (r *Result) cloudHypervisor(vals Values, opts Options) error {
	var argv []string
	var api []credential.Secret
	for _, it := range r.Plan.Items {
		switch it.Carrier {
		case plan.CarrierArgv:
			if it.Secret {
				return fmt.Errorf("credential %q: %w: a secret never goes on cloud-hypervisor's command line", it.Name, ErrOption)
			}
			if bad := strings.IndexAny(it.Name, `,[]"`); bad >= 0 {
				return fmt.Errorf("credential %q: %w: cloud-hypervisor's option parser would split the name at %q", it.Name, ErrOption, it.Name[bad])
			}
			s, err := oemString(it, vals[it.Name])
			if err != nil {
				return err
			}
			argv = append(argv, string(s.Reveal()))
		case plan.CarrierAPI:
			s, err := oemString(it, vals[it.Name])
			if err != nil {
				return err
			}
			api = append(api, s)
		case plan.CarrierChannel:
		default:
			return fmt.Errorf("credential %q: %w: %s is not a cloud-hypervisor carrier", it.Name, ErrOption, it.Carrier)
		}
	}
	if len(argv) > 0 {
		// cloud-hypervisor takes one --platform only: a launcher that sets
		// other platform keys must use the API (--ch-api, --ch-config).
		r.Args = append(r.Args, "--platform", "oem_strings=["+strings.Join(argv, ",")+"]")
	}
	if len(api) == 0 {
		return nil
	}
	if opts.CHAPISocket == "" {
		return fmt.Errorf("%w: the plan uses cloud-hypervisor's API but no API socket was given (--ch-api SOCKET)", ErrOption)
	}
	body, err := CHCreateRequest(opts.CHConfig, api)
	for _, s := range api {
		s.Wipe()
	}
	if err != nil {
		return err
	}
	path := r.addFile(CHCreateBody, "", RoleCHAPI, body)
	r.API = &APIRequest{Socket: opts.CHAPISocket, BodyFile: path, Calls: []string{"PUT " + CHCreatePath, "PUT " + CHBootPath}}
	return nil
}

// CHCreateRequest returns the JSON body of PUT /api/v1/vm.create: base (a
// VmConfig object, or nil for none) with strs appended to
// platform.oem_strings after any strings base already has. JSON arrays
// bypass the command-line parser, so any byte but NUL could go here; the
// strings are still base64 OEM strings. The result holds the values.
func CHCreateRequest(base []byte, strs []credential.Secret) (credential.Secret, error) {
	cfg := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(base)) > 0 {
		if len(base) > MaxCHConfig {
			return credential.Secret{}, fmt.Errorf("%w: cloud-hypervisor config is %d bytes, over the %d-byte limit", ErrOption, len(base), MaxCHConfig)
		}
		if err := json.Unmarshal(base, &cfg); err != nil {
			return credential.Secret{}, fmt.Errorf("%w: cloud-hypervisor config is not a JSON object: %w", ErrOption, err)
		}
		if cfg == nil {
			cfg = map[string]json.RawMessage{}
		}
	}
	platform := map[string]json.RawMessage{}
	if raw, ok := cfg["platform"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &platform); err != nil {
			return credential.Secret{}, fmt.Errorf("%w: cloud-hypervisor config: platform is not a JSON object: %w", ErrOption, err)
		}
	}
	var existing []string
	if raw, ok := platform["oem_strings"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &existing); err != nil {
			return credential.Secret{}, fmt.Errorf("%w: cloud-hypervisor config: platform.oem_strings is not an array of strings: %w", ErrOption, err)
		}
	}

	// The values are spliced in after encoding, so they never pass through
	// encoding/json's pooled buffers.
	const marker = `"@vmcred-oem-strings@"`
	if bytes.Contains(base, []byte("@vmcred-oem-strings@")) {
		return credential.Secret{}, fmt.Errorf("%w: cloud-hypervisor config contains vmcred's marker text", ErrOption)
	}
	platform["oem_strings"] = json.RawMessage(marker)
	pb, err := json.Marshal(platform)
	if err != nil {
		return credential.Secret{}, fmt.Errorf("encode vm.create body: %w", err)
	}
	cfg["platform"] = pb
	skeleton, err := json.Marshal(cfg)
	if err != nil {
		return credential.Secret{}, fmt.Errorf("encode vm.create body: %w", err)
	}
	at := bytes.Index(skeleton, []byte(marker))
	n := len(skeleton) + 2
	for _, s := range existing {
		n += len(s)*6 + 3
	}
	for _, s := range strs {
		n += s.Len()*6 + 3
	}
	out := make([]byte, 0, n)
	out = append(out, skeleton[:at]...)
	out = append(out, '[')
	for _, s := range existing {
		out = appendJSONString(out, []byte(s))
		out = append(out, ',')
	}
	for _, s := range strs {
		out = appendJSONString(out, s.Reveal())
		out = append(out, ',')
	}
	if out[len(out)-1] == ',' {
		out = out[:len(out)-1]
	}
	out = append(out, ']')
	out = append(out, skeleton[at+len(marker):]...)
	return credential.NewSecret(out), nil
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// appendJSONString appends b as a JSON string. OEM strings are printable
// ASCII; anything else is escaped as \u00XX so the output is always valid.
func appendJSONString(dst, b []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for _, c := range b {
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c < 0x20 || c >= 0x7f || c == '<' || c == '>' || c == '&':
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}
