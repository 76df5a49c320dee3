package termtext

import (
	"testing"
	"unicode/utf8"
)

func TestClean(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"plain text", 0, "plain text"},
		{"api-key…", 0, "api-key…"},
		{"\x1b]0;pwned\x07title", 0, " ]0;pwned title"},
		{"red\x1b[31mtext\x1b[0m", 0, "red [31mtext [0m"},
		{"c1\u009b2Jcsi", 0, "c1 2Jcsi"},
		{"del\x7fx", 0, "del x"},
		{"bad\xffutf8", 0, "bad utf8"},
		{"bidi\u202etxt.exe", 0, "bidi txt.exe"},
		{"line\nbreak\r\ttab", 0, "line break  tab"},
		{"abcdef", 3, "abc…"},
		{"ab…cd", 3, "ab…"},
		{"ab…cd", 4, "ab…"},
	} {
		if got := Clean(tc.in, tc.max); got != tc.want {
			t.Errorf("Clean(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

func FuzzClean(f *testing.F) {
	for _, s := range []string{"", "a", "\x1b[2J", "\u009b", "\xff\xfe", "x\u202ey"} {
		f.Add(s, 0)
		f.Add(s, 2)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<20 {
			return
		}
		got := Clean(s, max)
		if !Safe(got) || !utf8.ValidString(got) {
			t.Fatalf("Clean(%q) = %q is not safe", s, got)
		}
		if max > 0 && len(got) > max+len(Ellipsis) {
			t.Fatalf("Clean(%q, %d) = %d bytes", s, max, len(got))
		}
		if Clean(got, 0) != got {
			t.Fatalf("Clean is not idempotent on %q", got)
		}
	})
}
