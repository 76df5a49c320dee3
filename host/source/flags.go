package source

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/vmcred/vmcred/shared/credential"
)

// Flags collects the four source flags of vmcred-host pack, check and run
// (DESIGN §7) in command-line order. The zero value is ready to Register.
//
// Parsing happens in Specs, not while pflag parses: pflag's message for a
// rejected value quotes the whole argument, and a mistyped
// --cred api-key=hunter2 must not put hunter2 into an error message.
type Flags struct {
	args []flagArg
}

type flagArg struct {
	kind  Kind
	value string
}

// Register adds --cred, --cred-dir, --from-credentials-directory and
// --static to fs. Repeated flags accumulate and are never split on commas
// (unlike pflag's StringSlice), since paths and static values may contain
// them; only --from-credentials-directory=NAME,... splits its names.
//
// A bare --from-credentials-directory means every credential there; give
// names with '=' (--from-credentials-directory=a,b), since with an optional
// value pflag reads "--from-credentials-directory a" as the bare flag
// followed by an argument.
func (f *Flags) Register(fs *pflag.FlagSet) {
	fs.Var(&flagValue{f: f, kind: File, typ: "stringArray"}, "cred",
		"read credential `NAME=file:PATH` from a root-only file (repeatable; only the file: scheme exists)")
	fs.Var(&flagValue{f: f, kind: Dir, typ: "stringArray"}, "cred-dir",
		"read every regular file in `DIR` (a clan vars generator folder) as a credential named after it (repeatable)")
	fl := fs.VarPF(&flagValue{f: f, kind: CredentialsDirectory}, "from-credentials-directory", "",
		"read credentials from $CREDENTIALS_DIRECTORY (set by LoadCredential= on the VM's unit): all of them, or only the comma-separated `NAMES` given after '='")
	fl.NoOptDefVal = AllCredentials
	fs.Var(&flagValue{f: f, kind: Static, typ: "stringArray"}, "static",
		"add the non-secret credential `NAME=VALUE` (repeatable; never use it for secrets)")
}

// flagValue is a pflag.Value that appends to Flags in command-line order and
// never fails, so pflag never echoes an argument.
type flagValue struct {
	f    *Flags
	kind Kind
	// typ is what Type returns: "stringArray" like pflag's own repeatable
	// string flag, or "" for --from-credentials-directory, whose value is
	// optional (help shows "--from-credentials-directory[=NAMES]": a
	// separate word is not its value).
	typ string
}

func (v *flagValue) Set(s string) error {
	v.f.args = append(v.f.args, flagArg{kind: v.kind, value: s})
	return nil
}

// String returns "" so that help never shows a value as a default.
func (v *flagValue) String() string { return "" }

func (v *flagValue) Type() string { return v.typ }

// Specs validates the flags' syntax and names and returns one Spec per flag
// occurrence, in command-line order. Every error wraps ErrUsage. A name given
// twice by --cred, --static or named --from-credentials-directory is an error
// here; duplicates that involve directory contents are found by Collect.
func (f *Flags) Specs() ([]Spec, error) {
	var specs []Spec
	seen := make(map[string]Kind)
	all := false
	named := false
	for i, a := range f.args {
		spec, err := parseArg(a)
		if err != nil {
			return nil, err
		}
		if spec.Kind == CredentialsDirectory {
			if spec.Names == nil {
				all = true
			} else {
				named = true
			}
			if all && named {
				return nil, usagef("--from-credentials-directory given both bare (every credential) and with names; use one form")
			}
		}
		names := spec.Names
		if spec.Kind == File || spec.Kind == Static {
			names = []string{spec.Name}
		}
		for _, n := range names {
			if k, ok := seen[n]; ok {
				return nil, &usageError{err: fmt.Errorf("%w %q: given by %s and again by %s (argument %d)", ErrDuplicate, n, k, spec.Kind, i+1)}
			}
			seen[n] = spec.Kind
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

func parseArg(a flagArg) (Spec, error) {
	switch a.kind {
	case File:
		return parseCred(a.value)
	case Dir:
		if a.value == "" {
			return Spec{}, usagef("--cred-dir: empty directory path")
		}
		return Spec{Kind: Dir, Path: a.value}, nil
	case CredentialsDirectory:
		return parseNames(a.value)
	case Static:
		return parseStatic(a.value)
	}
	return Spec{}, usagef("unknown source kind %d", int(a.kind))
}

const fileScheme = "=file:"

// parseCred parses NAME=file:PATH. It splits at the first "=file:", so a
// name may contain '=' (systemd allows it), though not ':'. Its errors never
// echo anything after the first '=', which may be a secret typed by mistake.
func parseCred(s string) (Spec, error) {
	i := strings.Index(s, fileScheme)
	if i < 0 {
		name, rest, ok := strings.Cut(s, "=")
		if !ok {
			// No '=': the argument may be a pasted secret; show only its length.
			return Spec{}, usagef("--cred: argument of %d bytes is not NAME=file:PATH", len(s))
		}
		if strings.Trim(rest, "=") == "" || credential.ValidateName(name) != nil {
			// Only '=' after the first one: a pasted base64 secret and its
			// padding, not NAME=VALUE; and an invalid name may be anything.
			// Show only the length here too.
			return Spec{}, usagef("--cred: argument of %d bytes is not NAME=file:PATH: a literal value is not accepted; secrets are never taken literally from argv or the environment", len(s))
		}
		what := "a literal value"
		if scheme, _, ok := strings.Cut(rest, ":"); ok && isScheme(scheme) {
			what = fmt.Sprintf("the %s: scheme", scheme)
		}
		return Spec{}, usagef("--cred %q: %s is not accepted, only NAME=file:PATH: secrets are never taken literally from argv or the environment "+
			"(put the value in a root-only file, or use LoadCredential= on the VM's unit with --from-credentials-directory)", name+"=…", what)
	}
	name, path := s[:i], s[i+len(fileScheme):]
	if err := credential.ValidateName(name); err != nil {
		return Spec{}, &usageError{err: fmt.Errorf("--cred: %w", err)}
	}
	if path == "" {
		return Spec{}, usagef("--cred %q: empty path after file:", name+"=file:")
	}
	return Spec{Kind: File, Name: name, Path: path}, nil
}

// isScheme reports whether s looks like a URL scheme (env, literal, sops),
// which is safe to echo; anything else might be part of a secret.
func isScheme(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for _, c := range s {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '+' || c == '.') {
			return false
		}
	}
	return true
}

// parseNames parses the value of --from-credentials-directory. Names are
// separated by ',', so a name containing ',' can be read only by the bare
// flag, which reads every file.
func parseNames(s string) (Spec, error) {
	if s == AllCredentials {
		return Spec{Kind: CredentialsDirectory}, nil
	}
	if s == "" {
		return Spec{}, usagef("--from-credentials-directory=: empty list of names; give the bare flag to read every credential")
	}
	var names []string
	seen := make(map[string]bool)
	for n := range strings.SplitSeq(s, ",") {
		if err := credential.ValidateName(n); err != nil {
			return Spec{}, &usageError{err: fmt.Errorf("--from-credentials-directory: %w", err)}
		}
		if seen[n] {
			return Spec{}, &usageError{err: fmt.Errorf("--from-credentials-directory: %w %q listed twice", ErrDuplicate, n)}
		}
		seen[n] = true
		names = append(names, n)
	}
	return Spec{Kind: CredentialsDirectory, Names: names}, nil
}

// parseStatic parses NAME=VALUE at the first '=': the value may contain '='
// but the name may not. The value is not secret and may be empty.
func parseStatic(s string) (Spec, error) {
	name, value, ok := strings.Cut(s, "=")
	if !ok {
		return Spec{}, usagef("--static: argument of %d bytes is not NAME=VALUE", len(s))
	}
	if err := credential.ValidateName(name); err != nil {
		return Spec{}, &usageError{err: fmt.Errorf("--static: %w", err)}
	}
	if len(value) > credential.MaxSize {
		return Spec{}, &usageError{err: fmt.Errorf("--static %q: %w: %d bytes, over the %d-byte limit", name, ErrTooLarge, len(value), credential.MaxSize)}
	}
	return Spec{Kind: Static, Name: name, Value: value}, nil
}
