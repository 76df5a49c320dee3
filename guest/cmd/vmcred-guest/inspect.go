package main

import (
	"bufio"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/guest/trustkey"
	"github.com/vmcred/vmcred/shared/cli"
)

// defaults are where the debug commands look when no flag says otherwise.
// main uses productionDefaults; tests point every field into a fixture
// tree, so no command reads the machine's own /run or /sys under test.
type defaults struct {
	// root is the --root default: the guest tree every default path is
	// read under ("" for the running system).
	root              string
	statusDir         string
	credstore         string
	systemCredentials string
	// trustDir is the trust folder verify and show use when no
	// --trust-key is given and it holds *.pub files.
	trustDir string
	// searchPath builds LoadCredential='s search path from the
	// @system and credstore folders in use.
	searchPath func(system, store string) []string
	// listDir rates a folder's credential files (credstore.List when nil).
	listDir func(dir string) ([]credstore.FileInfo, error)
	// now is the clock for not-after checks (time.Now when nil).
	now func() time.Time
	// terminal reports whether w is a terminal and how wide (nil: never
	// a terminal, as in tests).
	terminal func(w io.Writer) (cols int, ok bool)
}

func productionDefaults() defaults {
	return defaults{
		statusDir:         agent.DefaultStatusDir,
		credstore:         agent.DefaultCredstore,
		systemCredentials: DefaultSystemCredentials,
		trustDir:          debug.DefaultTrustDir,
		searchPath:        debug.DefaultSearchPath,
		terminal:          osTerminal,
	}
}

// osTerminal asks the kernel for w's window size: it answers only for a
// terminal.
func osTerminal(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok {
		return 0, false
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0, false
	}
	if ws.Col == 0 {
		return debug.Width, true
	}
	return int(ws.Col), true
}

// isTerminal reports whether env's stdout is a terminal.
func (d defaults) isTerminal(env *cli.Env) bool {
	if d.terminal == nil {
		return false
	}
	_, ok := d.terminal(env.Stdout)
	return ok
}

// layout is how text output fits env's stdout: a terminal's width
// ($COLUMNS, as systemd honours it, else the kernel's), or no limit for
// a pipe or a file.
func (d defaults) layout(env *cli.Env, noLegend bool) debug.Layout {
	lay := debug.Layout{NoLegend: noLegend}
	if d.terminal != nil {
		if cols, ok := d.terminal(env.Stdout); ok {
			lay.Width = cols
		}
	}
	if env.Getenv != nil {
		if n, err := strconv.Atoi(env.Getenv("COLUMNS")); err == nil && n > 0 {
			lay.Width = n
		}
	}
	return lay
}

// where are the location flags the debug commands share.
type where struct {
	root, statusDir, credstore, system string
	searchPath                         []string
}

// register adds --credstore, --search-path and, as asked, --status-dir
// and --system-credentials (show and verify get the latter from
// policyFlags).
func (w *where) register(fs *pflag.FlagSet, d defaults, statusDir, system bool) {
	w.registerRoot(fs, d)
	if statusDir {
		fs.StringVar(&w.statusDir, "status-dir", d.statusDir, "read the last load's report (status.json) from `DIR`")
	}
	fs.StringVar(&w.credstore, "credstore", d.credstore, "the credstore `DIR` the agent exposes credentials in")
	if system {
		fs.StringVar(&w.system, "system-credentials", d.systemCredentials, "the `DIR` where systemd imported credentials itself (\"\" to skip)")
	}
	fs.StringSliceVar(&w.searchPath, "search-path", nil, "the `DIRS` LoadCredential=NAME searches, in order, comma-separated (default: the --system-credentials folder, /etc/credstore, the --credstore folder, /usr/local/lib/credstore, /usr/lib/credstore)")
}

// registerRoot adds --root.
func (w *where) registerRoot(fs *pflag.FlagSet, d defaults) {
	fs.StringVar(&w.root, "root", d.root, "inspect a guest tree mounted at `DIR` (a disk image, a container): every default path and the firmware under /sys are read inside it")
}

// rootFS is what firmware's default sources (sys/firmware/…) are read
// relative to.
func (w *where) rootFS() fs.FS {
	if w.root == "" {
		return os.DirFS("/")
	}
	return os.DirFS(w.root)
}

// inspector turns the flags into a debug.Inspector.
func (w *where) inspector(d defaults) debug.Inspector {
	in := debug.Inspector{Root: w.root, StatusDir: w.statusDir, Credstore: w.credstore, SystemCredentials: w.system, SearchPath: w.searchPath, ListDir: d.listDir, Now: d.now}
	if in.SearchPath == nil && d.searchPath != nil {
		in.SearchPath = d.searchPath(w.system, w.credstore)
	}
	return in
}

// trust resolves the trust keys for verify and show: the --trust-key
// flags, or else the default trust folder when it holds any *.pub file
// (the keys vmcred-guest.service's load trusted). It returns the keys and
// where they came from ("" for none).
func (d defaults) trust(fs *pflag.FlagSet, pol *policyFlags, root string) ([]ed25519.PublicKey, string, error) {
	from := strings.Join(pol.trustKeys, ", ")
	if !fs.Changed("trust-key") && d.trustDir != "" {
		dir := filepath.Join(root, d.trustDir)
		if pubs, _ := filepath.Glob(filepath.Join(dir, "*.pub")); len(pubs) > 0 {
			pol.trustKeys, from = []string{dir}, d.trustDir
		}
	}
	keys, err := pol.keys()
	if err != nil {
		return nil, "", err
	}
	return keys, from, nil
}

// vmName is the VM name the debug views check a manifest against, found
// as the agent finds its own: --vm, else the VM name file under root when
// it exists (trustkey.DefaultVMNameFile, which the NixOS module writes).
// "" when neither gives one: the manifest is then refused unless
// --allow-any-vm, as the agent refuses it.
func vmName(pol *policyFlags, root string) (string, error) {
	if pol.vm != "" {
		return pol.vm, nil
	}
	name, err := trustkey.ReadVMName(filepath.Join(root, trustkey.DefaultVMNameFile))
	switch {
	case err == nil:
		return name, nil
	case errors.Is(err, fs.ErrNotExist):
		return "", nil
	case errors.Is(err, trustkey.ErrUnsafe):
		return "", cli.WithCode(cli.ExitFailure, err)
	}
	return "", cli.WithCode(cli.ExitIO, err)
}

// registerAnyVM adds --allow-any-vm to a debug view.
func registerAnyVM(fs *pflag.FlagSet) *bool {
	return fs.Bool("allow-any-vm", false, "with neither --vm nor "+trustkey.DefaultVMNameFile+", accept a manifest issued for any VM (as `load --allow-any-vm` does)")
}

// registerJSON adds --json.
func registerJSON(fs *pflag.FlagSet) *bool {
	return fs.Bool("json", false, "print one JSON object (schemas in guest/debug/SCHEMA.md)")
}

// printer is what every debug view is.
type printer interface {
	WriteJSON(io.Writer) error
	WriteText(io.Writer) error
}

// emit prints v as JSON or text laid out by lay, then returns err, the
// command's outcome: a view is worth printing even when the command
// fails. Output is buffered: a table of 1000 credentials is one write,
// not 1000.
func emit(env *cli.Env, lay debug.Layout, asJSON bool, v printer, err error) error {
	bw := bufio.NewWriterSize(env.Stdout, 64<<10)
	var werr error
	if asJSON {
		werr = v.WriteJSON(bw)
	} else {
		werr = v.WriteText(&debug.LayoutWriter{Writer: bw, Layout: lay})
	}
	if ferr := bw.Flush(); werr == nil {
		werr = ferr
	}
	if werr != nil && err == nil {
		return cli.WithCode(cli.ExitIO, fmt.Errorf("write output: %w", werr))
	}
	return err
}
