//go:build linux

package debug

import (
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/shared/credential"
)

// listHashed lists the credential files of dir exactly as credstore.List
// does (valid names, regular files, rated secure, weak or insecure as
// `systemd-creds list` rates them) and hashes each, in one pass of
// openat, fstat, read and close per file. credstore.List's own lstat pass
// on top of the hashing cost a fifth syscall per file, which kept `list
// --credstore` over 1000 credentials 10% behind `systemd-creds list`; the
// fused pass is ahead of it (BENCHMARKS.md). It rates with credstore's
// Rate and NoswapLookup; TestListHashedAgreesWithCredstoreList checks the
// two listings agree.
//
// Entries that are not credentials are returned in skipped. The error is
// about the folder itself; a file's is in its digest.
func listHashed(dir string) (files []credstore.FileInfo, sums map[string]digest, skipped []Skipped, err error) {
	d, err := openDir(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	defer d.close()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	var names []string
	for _, e := range ents {
		switch {
		case credential.ValidateName(e.Name()) != nil:
			skipped = append(skipped, Skipped{Name: e.Name(), Reason: "not a valid credential name", Detail: e.Type().String()})
		case !e.Type().IsRegular():
			skipped = append(skipped, Skipped{Name: e.Name(), Reason: "not a regular file", Detail: e.Type().String()})
		default:
			names = append(names, e.Name())
		}
	}
	sums = hashWith(d, names)
	noswap := credstore.NoswapLookup(func() (io.ReadCloser, error) { return os.Open("/proc/self/mountinfo") })
	for _, n := range names {
		dg := sums[n]
		switch {
		case errors.Is(dg.err, os.ErrNotExist):
			continue // vanished meanwhile, as credstore.List skips it
		case errors.Is(dg.err, errNotRegular), errors.Is(dg.err, syscall.ELOOP):
			skipped = append(skipped, Skipped{Name: n, Reason: "not a regular file"})
			continue
		}
		fi := credstore.FileInfo{Name: n, Size: dg.size, Mode: dg.perm, Filesystem: d.kind}
		if dg.kind != 0 {
			fi.Filesystem = dg.kind
		}
		if dg.err != nil {
			// Unreadable: rated by what could be learnt, which is nothing.
			fi.Security = credstore.Weak
		} else {
			fi.Security = credstore.Rate(dg.perm, fi.Filesystem, func() bool { return noswap(dg.dev) })
		}
		files = append(files, fi)
	}
	slices.SortFunc(skipped, func(a, b Skipped) int { return strings.Compare(a.Name, b.Name) })
	return files, sums, skipped, nil
}
