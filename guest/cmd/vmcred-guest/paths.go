package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// rootRelative turns a path given on the command line into a path relative
// to "/", for reading through os.DirFS("/"). Empty stays empty.
func rootRelative(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	return strings.TrimPrefix(a, "/"), nil
}
