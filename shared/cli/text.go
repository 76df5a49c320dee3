package cli

import "strconv"

// Count writes n and the noun, in the plural unless n is 1: "1
// credential", "3 credentials", "0 credentials". The noun must take a
// plain "s".
func Count(n int, noun string) string {
	s := strconv.Itoa(n) + " " + noun
	if n != 1 {
		s += "s"
	}
	return s
}
