// Package termtext makes untrusted text safe to print on a terminal or to
// write into a log line or a status file: a guest's report, an OEM string's
// name, a status file another program may have written. Control characters
// (C0, DEL and C1, which start terminal escape sequences: "\x1b]0;title\a",
// "\x1b[2J", U+009B), bidirectional overrides (which reorder what a person
// reads) and invalid UTF-8 all become spaces, so the text keeps its words
// but cannot move the cursor, retitle the window or hide part of a line.
//
// It is OS-free: host and guest packages may import it.
package termtext

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Ellipsis ends text that Clean cut.
const Ellipsis = "…"

// Clean returns s with every control character, bidirectional control,
// U+FFFD and invalid UTF-8 byte replaced by a space, cut to at most max
// bytes (at a rune boundary, ending in Ellipsis) when max > 0. Text that
// needs no change is returned as is, without allocating.
func Clean(s string, max int) string {
	if !Safe(s) {
		s = strings.Map(func(r rune) rune {
			if unsafeRune(r) {
				return ' '
			}
			return r
		}, strings.ToValidUTF8(s, " "))
	}
	if max > 0 && len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + Ellipsis
	}
	return s
}

// Safe reports whether s is valid UTF-8 without any rune Clean replaces.
func Safe(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < 0x7f {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || unsafeRune(r) {
			return false
		}
		i += size
	}
	return true
}

func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || r == unicode.ReplacementChar || unicode.Is(unicode.Bidi_Control, r)
}
