//go:build !linux

package credstore

import (
	"fmt"
	"os"
	"runtime"
)

func errUnsupported() error {
	return fmt.Errorf("credstore is not implemented on %s", runtime.GOOS)
}

func statfsKind(string) (Kind, error)    { return 0, errUnsupported() }
func fstatfsKind(*os.File) (Kind, error) { return 0, errUnsupported() }
func lockExclusive(*os.File) error       { return errUnsupported() }
func idOf(os.FileInfo) (fileID, bool)    { return fileID{}, false }
func ownerOf(os.FileInfo) (int, bool)    { return 0, false }

type fileID struct {
	dev, ino uint64
}
