// Package cli is the small command framework both vmcred binaries share:
// pflag subcommands, --help and --version everywhere, and the exit codes of
// the command-line contract (DESIGN §7). It reaches the OS only through the
// writers and functions in Env, so commands are testable in-process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"github.com/vmcred/vmcred/shared/logging"
)

// Exit codes, fixed by the command-line contract.
const (
	ExitOK      = 0 // success
	ExitFailure = 1 // verification or policy failure; `wait`: the guest reported failure
	ExitUsage   = 2 // usage error
	ExitIO      = 3 // a source or store could not be read or written
	ExitTimeout = 4 // timeout
)

// ExitError carries the exit code a command's error maps to.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *ExitError) Unwrap() error { return e.Err }

// WithCode tags err with an exit code; a nil err stays nil. An error that is
// already tagged keeps its innermost code unless code is wrapped around it
// on purpose by the caller.
func WithCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// Usagef returns a usage error (exit 2).
func Usagef(format string, args ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, args...)}
}

// CodeOf is the exit code for err: 0 for nil, the tagged code when there is
// one, 1 otherwise.
func CodeOf(err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, errHelpShown) {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitFailure
}

// errHelpShown ends a command successfully after --help printed its usage.
var errHelpShown = errors.New("help shown")

// Env is what a command may touch of the outside world.
type Env struct {
	Stdout  io.Writer
	Stderr  io.Writer
	Getenv  func(string) string
	Log     *logging.Logger
	Version string
}

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string
	Run     func(ctx context.Context, env *Env, args []string) error
}

// NewFlagSet returns a flag set for a subcommand whose usage line is usage
// (e.g. "vmcred-guest load [flags]"). Parse errors are returned, not printed.
func NewFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	return fs
}

// Parse parses args into fs. On -h/--help it prints usage and the flags to
// env.Stdout and returns an error that makes the command exit 0; a bad flag
// is a usage error naming it.
func Parse(env *Env, fs *pflag.FlagSet, usage string, args []string) error {
	help := fs.Lookup("help") != nil
	if !help {
		fs.BoolP("help", "h", false, "show this help")
	}
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) || (err == nil && mustBool(fs, "help")) {
		fmt.Fprintf(env.Stdout, "Usage: %s\n\nFlags:\n%s", usage, fs.FlagUsagesWrapped(80))
		return errHelpShown
	}
	if err != nil {
		return Usagef("%s: %v (see --help)", fs.Name(), err)
	}
	return nil
}

func mustBool(fs *pflag.FlagSet, name string) bool {
	v, err := fs.GetBool(name)
	return err == nil && v
}

// Main runs the subcommand named by args[0] and returns the exit code.
// Errors are logged once, at error level, prefixed with the subcommand name
// (the logger names the program).
func Main(ctx context.Context, prog string, cmds []Command, args []string, env *Env) int {
	byName := make(map[string]Command, len(cmds))
	for _, c := range cmds {
		byName[c.Name] = c
	}
	if len(args) == 0 {
		writeOverview(env.Stderr, prog, cmds)
		return ExitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		writeOverview(env.Stdout, prog, cmds)
		return ExitOK
	case "--version", "version":
		fmt.Fprintf(env.Stdout, "%s %s\n", prog, env.Version)
		return ExitOK
	}
	c, ok := byName[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "%s: unknown command %q (see %s --help)\n", prog, args[0], prog)
		return ExitUsage
	}
	err := c.Run(ctx, env, args[1:])
	code := CodeOf(err)
	if err != nil && !errors.Is(err, errHelpShown) {
		env.Log.Error(c.Name + ": " + err.Error())
	}
	return code
}

func writeOverview(w io.Writer, prog string, cmds []Command) {
	sorted := append([]Command(nil), cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s COMMAND [flags]\n\nCommands:\n", prog)
	for _, c := range sorted {
		fmt.Fprintf(&b, "  %-8s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintf(&b, "\nRun '%s COMMAND --help' for a command's flags; '%s --version' for the version.\n", prog, prog)
	fmt.Fprintf(&b, "Exit codes: 0 success, 1 verification or policy failure, 2 usage error,\n3 a source or store could not be read or written, 4 timeout.\n")
	_, _ = io.WriteString(w, b.String())
}
