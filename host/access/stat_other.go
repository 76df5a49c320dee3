//go:build !linux

package access

import (
	"errors"
	"fmt"
	"runtime"
)

// OSStat is not implemented here: the doctor models Linux permissions, and
// vmcred's host side runs on Linux (NixOS).
func OSStat(path string) (Info, error) {
	return Info{}, fmt.Errorf("lstat %s: access.OSStat not implemented on %s: %w", path, runtime.GOOS, errors.ErrUnsupported)
}
