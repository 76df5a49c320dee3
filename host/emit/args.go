package emit

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// WriteArgs writes args for a launcher: one per line, or each followed by
// a NUL with print0, so that a shell can read them safely:
//
//	mapfile -d '' args < <(vmcred-host pack --print0 ...)
//
// Line mode refuses an argument containing a newline (a runtime directory
// path could), and NUL mode one containing a NUL, rather than split it.
func WriteArgs(w io.Writer, args []string, print0 bool) error {
	sep := byte('\n')
	if print0 {
		sep = 0
	}
	for i, a := range args {
		if strings.IndexByte(a, sep) >= 0 {
			if print0 {
				return fmt.Errorf("argument %d contains a NUL byte", i+1)
			}
			return fmt.Errorf("argument %d contains a newline; use --print0", i+1)
		}
	}
	bw := bufio.NewWriter(w)
	for _, a := range args {
		bw.WriteString(a)
		bw.WriteByte(sep)
	}
	return bw.Flush()
}
