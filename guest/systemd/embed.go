// Package systemdunits holds the guest's systemd files: the agent's boot unit
// (vmcred-guest.service), the kernel modules it needs (modules-load.d) and an
// example consumer with its drop-in (examples/). They are plain files for
// distributions and image builders; Files embeds them for tools and tests
// that install them into a guest image. nixos-modules/guest.nix generates the
// same unit (nixos-modules/units_test.go compares them).
//
// Any package may import it; it imports nothing but embed.
package systemdunits

import "embed"

// Files holds vmcred-guest.service, modules-load.d/vmcred.conf and
// examples/, with the paths they have in this folder.
//
//go:embed vmcred-guest.service modules-load.d/vmcred.conf examples
var Files embed.FS
