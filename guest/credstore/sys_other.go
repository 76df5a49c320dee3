//go:build !linux

package credstore

import (
	"fmt"
	"io/fs"
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

func writeNew(int, string, uint32, []byte, bool) (uint64, error) { return 0, errUnsupported() }
func renameAt(int, string, string) error                         { return errUnsupported() }
func readDirTypes(int, string) (map[string]fs.FileMode, []string, error) {
	return nil, nil, errUnsupported()
}
func control(*os.File, func(int) error) error { return errUnsupported() }
