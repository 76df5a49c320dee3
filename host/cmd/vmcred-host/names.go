package main

import (
	"fmt"

	"github.com/vmcred/vmcred/shared/cli"
)

// maxVMName caps a VM name: NAME.json, the status file, must fit a file
// name (255 bytes).
const maxVMName = 250

// checkVMName applies the NixOS host module's rule for VM names
// ([A-Za-z0-9_][A-Za-z0-9_.-]*): a name ends up in unit names, file names
// and hypervisor arguments a runner word-splits, so it stays plain. A
// name the module would refuse is refused here too, as a usage error.
func checkVMName(vm string) error {
	if vm == "" {
		return cli.Usagef("--vm NAME is required")
	}
	if len(vm) > maxVMName {
		return cli.Usagef("--vm: a name of %d bytes, over the %d-byte limit", len(vm), maxVMName)
	}
	for i := 0; i < len(vm); i++ {
		c := vm[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' ||
			i > 0 && (c == '.' || c == '-')
		if !ok {
			return cli.Usagef("--vm %s: byte %d is %s; a VM name is letters, digits, '_', and after the first byte '.' and '-'", clipQ(vm), i+1, describeByte(c))
		}
	}
	return nil
}

func clipQ(s string) string { return fmt.Sprintf("%q", clipArg(s)) }

func describeByte(c byte) string {
	if c == ' ' {
		return "a space"
	}
	if c >= 0x21 && c < 0x7f {
		return fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf("0x%02x", c)
}
