package main

import (
	"context"
	"io"
	"unicode/utf8"

	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
)

// runShow prints everything known about one credential, or with --reveal
// its value (the file LoadCredential=NAME would pick) and nothing else.
func (d defaults) runShow(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlagSet("show")
	var src sourceFlags
	src.register(fs)
	var pol policyFlags
	pol.register(fs)
	var loc where
	loc.register(fs, d, true, false)
	reveal := fs.Bool("reveal", false, "print the value LoadCredential=NAME would get to stdout, byte for byte, and nothing else")
	force := fs.Bool("force", false, "with --reveal: write a binary value to a terminal too")
	newline := fs.String("newline", "auto", "with --reveal: add a final newline `WHEN`: auto (on a terminal, if the value does not end in one, as systemd-creds cat does), yes or no")
	anyVM := registerAnyVM(fs)
	asJSON := registerJSON(fs)
	if err := cli.Parse(env, fs, "vmcred-guest show NAME [--reveal] [--json] [flags]", args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return cli.Usagef("show takes one credential name")
	}
	name := fs.Arg(0)
	if err := credential.ValidateName(name); err != nil {
		return cli.Usagef("%v", err)
	}
	if *reveal && *asJSON {
		return cli.Usagef("--reveal prints the raw value and does not combine with --json")
	}
	switch *newline {
	case "auto", "yes", "no":
	default:
		return cli.Usagef("--newline %q: want auto, yes or no", *newline)
	}
	if !*reveal && (fs.Changed("force") || fs.Changed("newline")) {
		return cli.Usagef("--force and --newline apply to --reveal only")
	}
	loc.system = pol.systemCredentials
	if !fs.Changed("system-credentials") {
		loc.system = d.systemCredentials
	}
	in := loc.inspector(d)
	if *reveal {
		tty := d.isTerminal(env)
		rw := &revealWriter{w: env.Stdout, name: name, refuseBinary: tty && !*force,
			newline: *newline == "yes" || *newline == "auto" && tty}
		_, err := debug.Reveal(in, name, rw)
		return err
	}
	keys, from, err := d.trust(fs, &pol, loc.root)
	if err != nil {
		return err
	}
	vm, err := vmName(&pol, loc.root)
	if err != nil {
		return err
	}
	opt, err := src.options()
	if err != nil {
		return err
	}
	rep, rerr := src.readFrom(loc.rootFS(), opt)
	sh, err := debug.Show(in, name, rep, rerr, debug.Policy{TrustKeys: keys, TrustFrom: from, VM: vm, AllowAnyVM: *anyVM, AllowUnverified: pol.allowUnverified})
	return emit(env, d.layout(env, false), *asJSON, sh, err)
}

// revealWriter is where show --reveal writes the value (Reveal writes it in
// one call). On a terminal it refuses a binary value, which would garble
// the terminal and land in its scrollback, unless --force; it adds the
// final newline --newline asks for.
type revealWriter struct {
	w            io.Writer
	name         string
	refuseBinary bool
	newline      bool
}

func (r *revealWriter) Write(b []byte) (int, error) {
	if r.refuseBinary && isBinary(b) {
		return 0, cli.Usagef("credential %q holds binary data (%d bytes) and stdout is a terminal: add --force to write it there anyway, or redirect it to a file", r.name, len(b))
	}
	n, err := r.w.Write(b)
	if err == nil && r.newline && (len(b) == 0 || b[len(b)-1] != '\n') {
		_, err = io.WriteString(r.w, "\n")
	}
	return n, err
}

// isBinary reports whether b is not text: not UTF-8, or holding a control
// character other than tab, newline and carriage return.
func isBinary(b []byte) bool {
	if !utf8.Valid(b) {
		return true
	}
	for _, c := range b {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f {
			return true
		}
	}
	return false
}
