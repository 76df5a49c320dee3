package debug

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/vmcred/vmcred/shared/termtext"
)

// Width is the console width the human output is laid out for when the
// writer does not say (see Layout): the 80 columns of a VM's serial
// console, where an operator usually is when a service says its secret is
// missing. Prose wraps at Width at most.
const Width = 80

// DigestWidth is how many hex digits of a SHA-256 every text view shows:
// one width, so a digest can be compared across list, status, show and
// verify by eye. --json has all 64.
const DigestWidth = 12

// Layout says how the text views lay out for where they are written.
type Layout struct {
	// Width is the terminal's width in columns, or 0 when the output
	// is not a terminal: tables are then never shortened (a pipe or a
	// file gets every cell whole, as systemd-creds does).
	Width int
	// NoLegend leaves out the header lines, the column headings, the
	// count line and the findings: list prints only the rows, for
	// scripts (systemd-creds --no-legend).
	NoLegend bool
}

// LayoutWriter is a writer the text views lay out for. A plain io.Writer
// gets the default: an 80-column console, with legends.
type LayoutWriter struct {
	io.Writer
	Layout Layout
}

// layoutOf is w's layout.
func layoutOf(w io.Writer) Layout {
	if lw, ok := w.(*LayoutWriter); ok {
		return lw.Layout
	}
	return Layout{Width: Width}
}

// proseWidth is the width wrap fills: Width, or a narrower terminal's.
func proseWidth(w io.Writer) int {
	if n := layoutOf(w).Width; n > 0 && n < Width {
		return n
	}
	return Width
}

// column is one column of a table.
type column struct {
	head  string
	right bool // right-aligned (numbers)
	flex  bool // shortened with "…" when the table is wider than the terminal
	min   int  // narrowest a flex column gets
}

// table lays out rows in aligned columns two spaces apart, like
// `systemd-creds list`. Cells are counted in runes (all our text is ASCII
// but for "…"). When the table is wider than the terminal (the writer's
// Layout), the flex column (the name: show and --json print it whole) is
// shortened to fit; paths are never flex, and output that is not a
// terminal is never shortened. With NoLegend the headings are left out.
type table struct {
	cols []column
	rows [][]string
}

// add adds a row. Cells may hold text from a table or a status file that
// someone else wrote: they are sanitized here (shared/termtext), so no
// escape sequence reaches the terminal and the widths count what is shown.
func (t *table) add(cells ...string) {
	for i, c := range cells {
		cells[i] = termtext.Clean(c, 0)
	}
	t.rows = append(t.rows, cells)
}

// write writes the table and reports whether it had any row; with none it
// writes nothing at all.
func (t *table) write(w io.Writer) bool {
	widths := make([]int, len(t.cols))
	for i, c := range t.cols {
		widths[i] = runeLen(c.head)
	}
	for _, r := range t.rows {
		for i, cell := range r {
			widths[i] = max(widths[i], runeLen(cell))
		}
	}
	total := 2 * (len(widths) - 1)
	for _, n := range widths {
		total += n
	}
	lay := layoutOf(w)
	for i, c := range t.cols {
		if c.flex && lay.Width > 0 && total > lay.Width {
			shrink := min(total-lay.Width, widths[i]-max(c.min, runeLen(c.head)))
			if shrink > 0 {
				widths[i] -= shrink
				total -= shrink
			}
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		b.Reset()
		for i, cell := range cells {
			c := t.cols[i]
			cell = clip(cell, widths[i])
			pad := strings.Repeat(" ", widths[i]-runeLen(cell))
			last := i == len(cells)-1
			switch {
			case c.right:
				b.WriteString(pad + cell)
			case last:
				b.WriteString(cell)
			default:
				b.WriteString(cell + pad)
			}
			if !last {
				b.WriteString("  ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	if len(t.rows) == 0 {
		return false // the count line after the table says "0 credentials"
	}
	if !lay.NoLegend {
		heads := make([]string, len(t.cols))
		for i, c := range t.cols {
			heads[i] = c.head
		}
		line(heads)
	}
	for _, r := range t.rows {
		line(r)
	}
	return true
}

func runeLen(s string) int { return utf8.RuneCountInString(s) }

// clip shortens s to n runes, ending in "…" when it cut something.
func clip(s string, n int) string {
	if runeLen(s) <= n {
		return s
	}
	if n < 1 {
		return ""
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// wrap writes text word-wrapped to Width: the first line starts with
// first, the others with as many spaces as first is wide. A word longer
// than a line (a long path) gets a line of its own. text is sanitized
// (shared/termtext): it may come from a status file or a table.
func wrap(w io.Writer, first, text string) {
	text = termtext.Clean(text, 0)
	indent := strings.Repeat(" ", runeLen(first))
	line := first
	empty := true
	width := proseWidth(w)
	for _, word := range strings.Fields(text) {
		if !empty && runeLen(line)+1+runeLen(word) > width {
			fmt.Fprintln(w, line)
			line, empty = indent, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	fmt.Fprintln(w, line)
}

// kv writes "Key          value", the value wrapped under itself.
func kv(w io.Writer, key, value string) {
	wrap(w, fmt.Sprintf("%-14s ", key), value)
}

// short is the first DigestWidth hex digits of a digest, or "-" for none.
func short(sum string) string {
	if sum == "" {
		return "-"
	}
	if len(sum) > DigestWidth {
		return sum[:DigestWidth]
	}
	return sum
}

// humanSize is a size as systemd-creds list shows it (format_bytes): "64B",
// "1.5K", "3.0M", "100M" (base 1024, one decimal below 10 units). Tables
// use it; prose and --json give exact bytes.
func humanSize(n int64) string {
	if n < 0 {
		return "-"
	}
	units := []string{"K", "M", "G", "T"}
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	f := int64(1024)
	i := 0
	for i < len(units)-1 && n >= f*1024 {
		f *= 1024
		i++
	}
	if n < 10*f {
		return fmt.Sprintf("%d.%d%s", n/f, n*10/f%10, units[i])
	}
	return fmt.Sprintf("%d%s", n/f, units[i])
}

// wholeName is the clip limit for names in table cells: none, since
// every name fits it; the table shortens its NAME column for a narrow
// terminal and leaves it whole when piped.
const wholeName = 1 << 10

// printable quotes names with spaces (valid in credential names) so the
// columns stay readable, and shortens very long ones.
func printable(s string, max int) string {
	if strings.ContainsAny(s, " \t") {
		s = fmt.Sprintf("%q", s)
	}
	return clip(s, max)
}

// plural is "1 credential", "2 credentials", "3 entries".
func plural(n int, noun string) string {
	switch {
	case n == 1:
		return fmt.Sprintf("%d %s", n, noun)
	case strings.HasSuffix(noun, "y"):
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(noun, "y"))
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// orNA is s, or "n/a" when s is empty.
func orNA(s string) string {
	if s == "" {
		return "n/a"
	}
	return s
}
