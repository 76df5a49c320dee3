// Package credential defines what a systemd credential is to vmcred: a name
// valid under systemd's rules and a value kept in a Secret that never prints.
//
// It is OS-free and may be imported by every vmcred package, host or guest.
package credential

import (
	"errors"
	"fmt"
)

// Size limits systemd applies to credentials it imports (src/shared/creds-util.h).
const (
	// MaxNameLen is CREDENTIAL_NAME_MAX: NAME_MAX and FDNAME_MAX are both 255.
	MaxNameLen = 255
	// MaxSize is CREDENTIAL_SIZE_MAX: 1 MiB of decoded data per credential.
	MaxSize = 1 << 20
	// MaxTotalSize is CREDENTIALS_TOTAL_SIZE_MAX: one 1 MiB budget shared by
	// every credential imported from fw_cfg, SMBIOS, the kernel command line
	// and the initrd in one boot.
	MaxTotalSize = 1 << 20
)

// ErrInvalidName is wrapped by every error ValidateName returns.
var ErrInvalidName = errors.New("invalid credential name")

// NameError says why a credential name is not valid. The name is not a
// secret, but it is quoted with %q so control bytes cannot forge log lines.
type NameError struct {
	Name   string
	Reason string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("credential name %q: %s", e.Name, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidName) true.
func (e *NameError) Unwrap() error { return ErrInvalidName }

// ValidateName checks name exactly as systemd's credential_name_valid does
// (filename_is_valid && fdname_is_valid): 1 to 255 bytes, each printable
// ASCII 0x20–0x7E, no '/' and no ':', and not "." or "..". A space, '=',
// '*', '~' and '@' are all allowed.
func ValidateName(name string) error {
	switch {
	case name == "":
		return &NameError{Name: name, Reason: "empty"}
	case name == "." || name == "..":
		return &NameError{Name: name, Reason: "is . or .."}
	case len(name) > MaxNameLen:
		// Do not echo a huge name back; its length says enough.
		return &NameError{Name: name[:32] + "…", Reason: fmt.Sprintf("%d bytes, over the %d-byte limit", len(name), MaxNameLen)}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c < 0x20 || c >= 0x7f:
			return &NameError{Name: name, Reason: fmt.Sprintf("byte %d is 0x%02x, not printable ASCII", i, c)}
		case c == '/':
			return &NameError{Name: name, Reason: "contains '/'"}
		case c == ':':
			return &NameError{Name: name, Reason: "contains ':'"}
		}
	}
	return nil
}
