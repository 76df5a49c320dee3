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
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"

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

// NewFlagSet returns an empty flag set for a subcommand. Parse errors are
// returned, not printed; flags are listed in the order they are defined.
func NewFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	return fs
}

// commonAnnotation marks the flags Parse adds to every command, which help
// lists apart from the command's own.
const commonAnnotation = "vmcred-cli-common"

// addCommon adds --quiet, --log-level and --help to fs, unless the command
// defined a flag of that name itself.
func addCommon(fs *pflag.FlagSet) {
	add := func(name string, define func()) {
		if fs.Lookup(name) != nil {
			return
		}
		define()
		_ = fs.SetAnnotation(name, commonAnnotation, []string{"true"})
	}
	// A shorthand a command took for itself is not taken again (pflag
	// panics on a duplicate).
	short := func(c string) string {
		if fs.ShorthandLookup(c) != nil {
			return ""
		}
		return c
	}
	add("quiet", func() {
		fs.BoolP("quiet", short("q"), false, "log warnings and errors only (the same as --log-level warn)")
	})
	add("log-level", func() {
		fs.String("log-level", "info", "log lines of `LEVEL` and above to stderr: debug, info, warn or error")
	})
	add("help", func() { fs.BoolP("help", short("h"), false, "show this help and exit") })
}

// Parse parses args into fs, after adding the flags every command takes:
// -q/--quiet and --log-level, which set env.Log's level, and -h/--help,
// which prints usage and fs's flags (see Help) to env.Stdout and returns
// an error that makes the command exit 0. A bad flag is a usage error
// naming it.
func Parse(env *Env, fs *pflag.FlagSet, usage string, args []string) error {
	addCommon(fs)
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) || (err == nil && mustBool(fs, "help")) {
		_, _ = io.WriteString(env.Stdout, Help(usage, fs))
		return errHelpShown
	}
	if err != nil {
		return Usagef("%v (see --help)", err)
	}
	return setLogLevel(env, fs)
}

// setLogLevel applies --quiet and --log-level to env.Log.
func setLogLevel(env *Env, fs *pflag.FlagSet) error {
	quiet := fs.Changed("quiet") && mustBool(fs, "quiet") && isCommon(fs.Lookup("quiet"))
	lf := fs.Lookup("log-level")
	if lf == nil || !isCommon(lf) {
		if quiet {
			env.Log.SetLevel(zapcore.WarnLevel)
		}
		return nil
	}
	if quiet && fs.Changed("log-level") {
		return Usagef("--quiet and --log-level: give one of them")
	}
	level, err := logging.ParseLevel(lf.Value.String())
	if err != nil {
		return Usagef("--log-level: %v", err)
	}
	if quiet {
		level = zapcore.WarnLevel
	}
	env.Log.SetLevel(level)
	return nil
}

func isCommon(f *pflag.Flag) bool {
	return f != nil && len(f.Annotations[commonAnnotation]) > 0
}

func mustBool(fs *pflag.FlagSet, name string) bool {
	v, err := fs.GetBool(name)
	return err == nil && v
}

// helpWidth is the width help text is wrapped to, whatever the terminal:
// the same text everywhere, and golden files can hold it.
const helpWidth = 80

// maxFlagColumn caps the flag column of help: a longer flag puts its
// description on the next line rather than squeezing every description.
const maxFlagColumn = 30

// Help is a command's --help text: "Usage: " and usage, then its own
// flags, then the flags every command takes. Each flag shows one
// placeholder in capitals: the back-quoted word of its usage (as
// pflag.UnquoteUsage finds it), else one derived from its type (VALUE, N,
// DURATION); a boolean shows none, and a flag whose value is optional
// shows it in brackets (--flag[=NAME,...]). A default is shown once: not
// when it is the type's zero value, nor when the usage text states it.
func Help(usage string, fs *pflag.FlagSet) string {
	var own, common []helpLine
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		if isCommon(f) {
			common = append(common, flagHelp(f))
		} else {
			own = append(own, flagHelp(f))
		}
	})
	col := 0
	for _, l := range append(append([]helpLine(nil), own...), common...) {
		if n := len(l.left); n > col && n <= maxFlagColumn {
			col = n
		}
	}
	col += 2
	var b strings.Builder
	writeUsage(&b, usage)
	if len(own) > 0 {
		b.WriteString("\nFlags:\n")
		writeHelpLines(&b, own, col)
	}
	if len(common) > 0 {
		b.WriteString("\nCommon flags:\n")
		writeHelpLines(&b, common, col)
	}
	return b.String()
}

type helpLine struct{ left, text string }

// writeUsage writes "Usage: " and usage wrapped to helpWidth: its first
// line's continuations are indented under the command's first argument,
// every other line's under its own leading spaces.
func writeUsage(b *strings.Builder, usage string) {
	for i, line := range strings.Split(usage, "\n") {
		if i == 0 {
			line = "Usage: " + line
		}
		rest := strings.TrimLeft(line, " ")
		lead := line[:len(line)-len(rest)]
		indent := lead
		if i == 0 {
			// "Usage: prog cmd " when the line has that many words.
			if f := strings.Fields(rest); len(f) > 3 {
				indent = strings.Repeat(" ", len(f[0])+len(f[1])+len(f[2])+3)
			}
		}
		if rest == "" {
			b.WriteString("\n")
			continue
		}
		for j, l := range wrapHanging(rest, helpWidth-len(lead), helpWidth-len(indent)) {
			if j == 0 {
				b.WriteString(lead + l + "\n")
			} else {
				b.WriteString(indent + l + "\n")
			}
		}
	}
}

// wrapHanging splits s into lines at spaces: the first at most first
// bytes, the others at most rest.
func wrapHanging(s string, first, rest int) []string {
	var lines []string
	cur, width := "", first
	for _, w := range strings.Fields(s) {
		switch {
		case cur == "":
			cur = w
		case len(cur)+1+len(w) <= width:
			cur += " " + w
		default:
			lines = append(lines, cur)
			cur, width = w, rest
		}
	}
	return append(lines, cur)
}

// wrapWords splits s into lines of at most width bytes at spaces; a word
// longer than width gets a line of its own.
func wrapWords(s string, width int) []string { return wrapHanging(s, width, width) }

func flagHelp(f *pflag.Flag) helpLine {
	left := "      --" + f.Name
	if f.Shorthand != "" && f.ShorthandDeprecated == "" {
		left = "  -" + f.Shorthand + ", --" + f.Name
	}
	placeholder, text := pflag.UnquoteUsage(f)
	if !strings.Contains(f.Usage, "`") {
		placeholder = typePlaceholder(f.Value.Type())
	}
	switch {
	case f.Value.Type() == "bool":
	case f.NoOptDefVal != "":
		left += "[=" + placeholder + "]"
	default:
		left += " " + placeholder
	}
	if !isZeroDefault(f.DefValue) && !strings.Contains(text, "(default") {
		def := f.DefValue
		if strings.ContainsAny(def, " \t") {
			def = strconv.Quote(def)
		}
		text += " (default " + def + ")"
	}
	return helpLine{left: left, text: text}
}

// typePlaceholder is the placeholder of a flag whose usage names none.
func typePlaceholder(typ string) string {
	switch typ {
	case "bool":
		return ""
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "count":
		return "N"
	case "duration":
		return "DURATION"
	}
	return "VALUE"
}

func isZeroDefault(v string) bool {
	switch v {
	case "", "false", "0", "[]", "0s":
		return true
	}
	return false
}

func writeHelpLines(b *strings.Builder, lines []helpLine, col int) {
	indent := strings.Repeat(" ", col)
	for _, l := range lines {
		b.WriteString(l.left)
		if len(l.left)+2 > col {
			b.WriteString("\n" + indent)
		} else {
			b.WriteString(strings.Repeat(" ", col-len(l.left)))
		}
		for i, line := range wrapWords(l.text, helpWidth-col) {
			if i > 0 {
				b.WriteString(indent)
			}
			b.WriteString(line + "\n")
		}
	}
}

// Main runs the subcommand named by args[0] and returns the exit code.
// "help CMD" is CMD --help. Errors are logged once, at error level,
// prefixed with the subcommand name (the logger names the program); an
// error that already starts with that name does not get it twice.
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
		if len(args) == 1 {
			writeOverview(env.Stdout, prog, cmds)
			return ExitOK
		}
		if len(args) > 2 {
			fmt.Fprintf(env.Stderr, "%s: help takes one command name (see %s --help)\n", prog, prog)
			return ExitUsage
		}
		c, ok := byName[args[1]]
		if !ok {
			fmt.Fprintf(env.Stderr, "%s: unknown command %q (see %s --help)\n", prog, args[1], prog)
			return ExitUsage
		}
		return CodeOf(c.Run(ctx, env, []string{"--help"}))
	case "--version", "version":
		fmt.Fprintf(env.Stdout, "%s %s\n", prog, env.Version)
		return ExitOK
	}
	c, ok := byName[args[0]]
	if !ok {
		what := "command"
		if strings.HasPrefix(args[0], "-") {
			what = "flag"
		}
		fmt.Fprintf(env.Stderr, "%s: unknown %s %q: give a command first (see %s --help)\n", prog, what, args[0], prog)
		return ExitUsage
	}
	err := c.Run(ctx, env, args[1:])
	code := CodeOf(err)
	if err != nil && !errors.Is(err, errHelpShown) {
		msg := err.Error()
		for strings.HasPrefix(msg, c.Name+": ") {
			msg = msg[len(c.Name)+2:]
		}
		env.Log.Error(c.Name + ": " + msg)
	}
	return code
}

func writeOverview(w io.Writer, prog string, cmds []Command) {
	sorted := append([]Command(nil), cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s COMMAND [flags]\n\nCommands:\n", prog)
	width := 0
	for _, c := range sorted {
		width = max(width, len(c.Name))
	}
	indent := strings.Repeat(" ", width+4)
	for _, c := range sorted {
		fmt.Fprintf(&b, "  %-*s  ", width, c.Name)
		for i, l := range wrapWords(c.Summary, helpWidth-len(indent)) {
			if i > 0 {
				b.WriteString(indent)
			}
			b.WriteString(l + "\n")
		}
	}
	fmt.Fprintf(&b, "\nRun '%s help COMMAND' for a command's flags (the same as\n'%s COMMAND --help'), '%s --version' for the version.\n", prog, prog, prog)
	fmt.Fprintf(&b, "Exit codes: 0 success, 1 verification or policy failure, 2 usage error,\n3 a source or store could not be read or written, 4 timeout.\n")
	_, _ = io.WriteString(w, b.String())
}
