// Command loadfloor measures the floor under `vmcred-guest load`: the
// least a process must do to put N credentials into a credstore on tmpfs,
// with none of vmcred's reading, verifying, reporting or logging.
//
//	loadfloor rename DIR N   per file: openat(O_CREAT|O_EXCL) a temporary
//	                         name, fstat, write 32 bytes, close, renameat
//	                         it into place (what vmcred-guest does: each
//	                         file atomically whole)
//	loadfloor swap DIR N     per file: openat, write, close in a staging
//	                         directory, then one rename of the directory
//	                         to DIR (only possible when DIR does not exist)
//
// DIR must not exist for swap; for rename it is created if missing.
// integration/bench-load.sh compares it with `vmcred-guest load` and with
// cmd/nop; BENCHMARKS.md has the figures.
package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: loadfloor rename|swap DIR N")
		os.Exit(2)
	}
	n, err := strconv.Atoi(os.Args[3])
	if err != nil || n < 0 {
		fmt.Fprintln(os.Stderr, "loadfloor: N must be a count")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], n); err != nil {
		fmt.Fprintln(os.Stderr, "loadfloor:", err)
		os.Exit(1)
	}
}

func run(mode, dir string, n int) error {
	val := make([]byte, 32)
	switch mode {
	case "rename":
		if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		dfd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", dir, err)
		}
		for i := range n {
			tmp, name := fmt.Sprintf(".tmp:%d", i), fmt.Sprintf("cred-%04d", i)
			if err := create(dfd, tmp, val, true); err != nil {
				return err
			}
			if err := syscall.Renameat(dfd, tmp, dfd, name); err != nil {
				return fmt.Errorf("rename %s: %w", name, err)
			}
		}
		return nil
	case "swap":
		stage := dir + ".stage"
		if err := os.Mkdir(stage, 0o700); err != nil {
			return err
		}
		dfd, err := syscall.Open(stage, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", stage, err)
		}
		for i := range n {
			if err := create(dfd, fmt.Sprintf("cred-%04d", i), val, false); err != nil {
				return err
			}
		}
		return os.Rename(stage, dir)
	}
	return fmt.Errorf("unknown mode %q (rename or swap)", mode)
}

// create makes name in dfd, 0400, holding val; with stat, it also fstats
// the file, as vmcred does to record its inode.
func create(dfd int, name string, val []byte, stat bool) error {
	fd, err := syscall.Openat(dfd, name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o400)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	defer syscall.Close(fd)
	if stat {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat %s: %w", name, err)
		}
	}
	if _, err := syscall.Write(fd, val); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
