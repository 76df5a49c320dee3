package smbios

import (
	"go/build"
	"slices"
	"testing"
)

// TestImports keeps the package OS-free: shared/... must not import os,
// syscall or net (style.md habit 10), so only these may appear.
func TestImports(t *testing.T) {
	allowed := []string{
		"bytes", "encoding/binary", "errors", "fmt", "io", "io/fs", "strings",
		"github.com/digitalocean/go-smbios/smbios",
	}
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if !slices.Contains(allowed, imp) {
			t.Errorf("package imports %q, which is not on the allowed list", imp)
		}
	}
}
