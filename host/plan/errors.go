package plan

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error New returns wraps ErrOption or ErrLimit; a
// *LimitError also wraps the specific limit.
var (
	// ErrOption means the options or inputs are inconsistent: a usage
	// error (exit code 2).
	ErrOption = errors.New("invalid plan option")
	// ErrLimit is wrapped by every *LimitError: a policy failure (exit 1).
	ErrLimit = errors.New("credential limit exceeded")

	// ErrTooLarge: one credential over systemd's 1 MiB.
	ErrTooLarge = errors.New("credential over the 1 MiB limit")
	// ErrTotalTooLarge: firmware deliveries over systemd's 1 MiB total.
	ErrTotalTooLarge = errors.New("firmware credentials over the 1 MiB total")
	// ErrTooManyStrings: over 255 strings in the type-11 structure.
	ErrTooManyStrings = errors.New("too many smbios oem strings")
	// ErrTableTooLarge: the SMBIOS table over its limit.
	ErrTableTooLarge = errors.New("smbios table too large")
	// ErrFwCfgName: a name too long for fw_cfg.
	ErrFwCfgName = errors.New("credential name too long for fw_cfg")
	// ErrTooManyFwCfg: more fw_cfg files than vmcred uses.
	ErrTooManyFwCfg = errors.New("too many fw_cfg files")
	// ErrNotCarried: the hypervisor cannot carry the credential as planned
	// (a name cloud-hypervisor's option parser would mangle).
	ErrNotCarried = errors.New("hypervisor cannot carry the credential")
)

// LimitError is a credential that breaks a limit. It names the
// credential, its size and the limit; never a value.
type LimitError struct {
	// Name is the credential that does not fit: for an aggregate limit,
	// the first (in plan order) that takes the total over.
	Name string
	// Size is its value's length in bytes.
	Size int
	// Detail says which limit and by how much.
	Detail string
	// Hint says what to do about it.
	Hint string
	// Err is the specific sentinel, e.g. ErrTableTooLarge.
	Err error
}

// Error returns e.g. `credential "big" (70000 bytes): smbios table would be
// 93381 bytes, over the 63487-byte limit (...); add --overflow channel ...`.
func (e *LimitError) Error() string {
	s := fmt.Sprintf("credential %q (%d bytes): %s", e.Name, e.Size, e.Detail)
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// Unwrap returns the specific sentinel and ErrLimit.
func (e *LimitError) Unwrap() []error { return []error{e.Err, ErrLimit} }

func optionf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrOption}, args...)...)
}
