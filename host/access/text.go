package access

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/vmcred/vmcred/shared/cli"
)

// width is the column WriteText wraps prose at. Paths and commands are
// never broken, so a line holding one may be longer.
const width = 80

// label is the width of the label column in WriteText.
const label = 11

// WriteJSON writes the report as one indented JSON object (the form of
// "vmcred-host check --json"): the fields of Report, Result and Fix with
// their json tags.
func (r Report) WriteJSON(w io.Writer) error {
	if r.Results == nil {
		r.Results = []Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a person: one block per credential with
// labels aligned, the verdict at the right margin, a summary, and the fix
// (drop-in first, the group route after it with its warning). Prose wraps at
// 80 columns; see the package documentation for an example.
func (r Report) WriteText(w io.Writer) error {
	b := bufio.NewWriter(w)
	p := printer{b: b}
	if r.VM != "VM" { // "VM" is the placeholder Diagnose puts for no --vm
		p.line(fmt.Sprintf("vmcred-host check: can %s read the credentials of VM %s?", r.User, r.VM))
	} else {
		p.line(fmt.Sprintf("vmcred-host check: can %s read these credentials?", r.User))
	}
	p.field("", "user", fmt.Sprintf("%s (uid %s)", r.User, r.UID))
	groups := make([]string, len(r.Groups))
	for i, g := range r.Groups {
		groups[i] = g.String()
	}
	p.field("", "groups", strings.Join(groups, ", "))
	b.WriteString("\n")

	unreadable := 0
	for _, res := range r.Results {
		verdict := "readable"
		if !res.Readable {
			unreadable++
			verdict = map[Status]string{Denied: "NOT READABLE", Missing: "MISSING", NotRegular: "NOT A FILE", Unknown: "UNKNOWN"}[res.Status]
		}
		pad := max(1, width-len(res.Name)-len(verdict))
		fmt.Fprintf(b, "%s%s%s\n", res.Name, strings.Repeat(" ", pad), verdict)
		p.field("  ", "path", res.Path)
		if res.Resolved != "" {
			p.field("  ", "target", res.Resolved)
		}
		if res.File != nil {
			file := res.File.String()
			if res.Readable && res.Via != "" {
				file += ", readable as " + res.Via
			}
			p.field("  ", "file", file)
		}
		if res.Reason != "" {
			p.field("  ", "why", res.Reason)
		}
		for _, bl := range res.Blocked {
			what := "cannot pass through it (no search permission)"
			if bl.Need == "list" {
				what = "cannot list it (vmcred-host reads --cred-dir directories)"
			}
			p.field("  ", "blocked by", fmt.Sprintf("%s (%s): %s %s", bl.Path, bl, r.User, what))
		}
		for _, a := range res.ACL {
			p.field("  ", "note", fmt.Sprintf("%s has a POSIX ACL, which this check does not evaluate: the verdict uses the mode bits only", a))
		}
	}
	if len(r.Results) > 0 {
		b.WriteString("\n")
	}

	switch {
	case len(r.Results) == 0:
		p.line("No credential files to check.")
	case unreadable == 0:
		if len(r.Results) == 1 {
			p.line(fmt.Sprintf("%s can read the one credential.", r.User))
		} else {
			p.line(fmt.Sprintf("%s can read all %d credentials.", r.User, len(r.Results)))
		}
	default:
		p.line(fmt.Sprintf("%s cannot read %d of %s.", r.User, unreadable, cli.Count(len(r.Results), "credential")))
	}

	if f := r.Fix; f != nil {
		b.WriteString("\n")
		p.line("Fix (recommended): keep the files root-only and let systemd hand them to the VM's unit. Create this drop-in:")
		b.WriteString("\n# " + f.DropInPath + "\n" + f.DropIn + "\n")
		p.line("then run:")
		b.WriteString("\n" + strings.Join(f.Then, "\n") + "\n\n")
		vm := ""
		if r.VM == "VM" {
			vm = " Replace VM with the VM's name."
		}
		p.line(fmt.Sprintf("and give the hypervisor hook %s instead of --cred or --cred-dir for these credentials.%s "+
			"On NixOS the vmcred host module does all of this.", f.Flag, vm))
		b.WriteString("\n")
		group := "its group"
		if len(r.Groups) > 0 {
			group = "group " + r.Groups[0].Name
		}
		p.line(fmt.Sprintf("Alternative (not recommended): make the files readable by %s:", group))
		b.WriteString("\n")
		for _, c := range f.Alternative {
			b.WriteString(c + "\n")
		}
		b.WriteString("\n")
		p.line("Warning: " + f.Warning)
	}
	return b.Flush()
}

// printer wraps prose at width.
type printer struct{ b *bufio.Writer }

// line writes text wrapped at width with no indent.
func (p printer) line(text string) { p.wrap("", "", text) }

// field writes "indent label value" with the value wrapped under itself.
func (p printer) field(indent, name, value string) {
	head := indent + name + strings.Repeat(" ", max(1, label-len(name)))
	p.wrap(head, strings.Repeat(" ", len(head)), value)
}

// wrap writes words after first (then after rest on later lines), breaking
// before a word that would pass width; a word longer than a line (a path)
// stays whole.
func (p printer) wrap(first, rest, text string) {
	line := first
	empty := true
	for word := range strings.FieldsSeq(text) {
		if !empty && len(line)+1+len(word) > width {
			p.b.WriteString(strings.TrimRight(line, " ") + "\n")
			line, empty = rest, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	p.b.WriteString(strings.TrimRight(line, " ") + "\n")
}
