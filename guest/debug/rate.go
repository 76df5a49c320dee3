package debug

import (
	"bufio"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// errNotRegular marks an entry that is not a regular file.
var errNotRegular = errors.New("not a regular file")

// The rating helpers below are credstore's rules (credstore/list.go),
// repeated so the Linux listing can rate a file from the fstat it makes
// anyway; TestListHashedAgreesWithCredstoreList keeps them in step.

// noswapLookup answers, per device and reading mountinfo at most once,
// whether the device's mount has the noswap option: credstore's rule
// (the first mountinfo line with the device's MAJOR:MINOR, per-mount or
// superblock options; any failure counts as no).
func noswapLookup(open func() (io.ReadCloser, error)) func(dev uint64) bool {
	var once sync.Once
	byDev := map[string]bool{}
	return func(dev uint64) bool {
		once.Do(func() {
			r, err := open()
			if err != nil {
				return
			}
			defer r.Close()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 0, 4096), 1<<20)
			for sc.Scan() {
				// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
				f := strings.Fields(sc.Text())
				if len(f) < 7 {
					continue
				}
				if _, seen := byDev[f[2]]; seen {
					continue
				}
				sep := slices.Index(f[6:], "-")
				if sep < 0 || 6+sep+3 >= len(f) {
					byDev[f[2]] = false
					continue
				}
				byDev[f[2]] = hasOption(f[5], "noswap") || hasOption(f[6+sep+3], "noswap")
			}
		})
		major, minor := devMajorMinor(dev)
		return byDev[strconv.FormatUint(major, 10)+":"+strconv.FormatUint(minor, 10)]
	}
}

func hasOption(opts, name string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == name {
			return true
		}
	}
	return false
}

// devMajorMinor splits a Linux dev_t as glibc's gnu_dev_major and
// gnu_dev_minor do.
func devMajorMinor(dev uint64) (major, minor uint64) {
	major = (dev&0x00000000000fff00)>>8 | (dev&0xfffff00000000000)>>32
	minor = dev&0x00000000000000ff | (dev&0x00000ffffff00000)>>12
	return major, minor
}
