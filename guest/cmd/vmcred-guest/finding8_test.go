package main

import (
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// escapes are what a hostile table or status file carries to take over the
// terminal of whoever runs `status` or `list`: retitle the window, clear
// the screen, a C1 CSI, DEL, a bidirectional override, invalid UTF-8.
const escapes = "\x1b]0;pwned\x07\x1b[2J\u009b31m\x7f\u202e\xff"

// terminalUnsafe returns the first byte offset in out that a terminal would
// act on, other than the newline that ends each line; -1 if none.
func terminalUnsafe(out []byte) int {
	for i := 0; i < len(out); {
		r, size := utf8.DecodeRune(out[i:])
		if (r == utf8.RuneError && size == 1) || (unicode.IsControl(r) && r != '\n') || unicode.Is(unicode.Bidi_Control, r) {
			return i
		}
		i += size
	}
	return -1
}

// TestFinding8TerminalEscapes is finding 8 of issue 17: `status` and
// `list` printed strings from status.json and from the firmware table
// raw, so escape sequences in a credential name, a skipped string's name,
// a problem or a summary reached the operator's terminal. Every text
// output is now sanitized as the host's readiness code sanitizes a guest's
// text (shared/termtext). (--json is for programs: encoding/json escapes
// C0 controls there.)
func TestFinding8TerminalEscapes(t *testing.T) {
	check := func(t *testing.T, what string, r result) {
		t.Helper()
		if i := terminalUnsafe(r.stdout); i >= 0 {
			t.Errorf("%s prints a terminal control at byte %d:\n%q", what, i, r.stdout[max(0, i-40):min(len(r.stdout), i+40)])
		}
	}

	t.Run("status", func(t *testing.T) {
		tr := newTree(t, fixedValue)
		rep := agent.Report{
			Outcome: agent.OutcomeFailed, Summary: "load failed: " + escapes, Policy: agent.PolicyDigest,
			Problems: []string{"problem " + escapes}, Credstore: "/run/credstore" + escapes, VM: "vm" + escapes,
			Credentials: []agent.CredentialResult{{Name: "api" + escapes, Size: 1, Source: "smbios", Verification: "digest", Problem: "bad " + escapes}},
			Skipped:     []agent.Skipped{{Index: 1, Source: "smbios", Name: "n" + escapes, Reason: "name is not valid", Detail: escapes}},
			Version:     "1.0" + escapes,
		}
		if err := agent.WriteStatus(tr.path("run/vmcred"), rep); err != nil {
			t.Fatal(err)
		}
		check(t, "status", run(tr.defaults(), "status"))
		check(t, "list", run(tr.defaults(), "list"))
	})

	t.Run("list of a hostile table", func(t *testing.T) {
		tr := newTree(t, fixedValue)
		strs := []string{
			oemstring.PrefixText + "bad" + escapes + "=x",
			oemstring.PrefixBinary + "b64" + escapes + "=!!",
			oemstring.PrefixText + "ok=1",
			oemstring.PrefixText + "ok=2",
		}
		tab, err := smbios.BuildQEMUTable(strs)
		if err != nil {
			t.Fatal(err)
		}
		tr.write("dmi", tab, 0o400)
		r := run(tr.defaults(), "list", "--dmi-table", tr.path("dmi"))
		if len(r.stdout) == 0 {
			t.Fatalf("no output (exit %d): %s", r.code, r.stderr)
		}
		check(t, "list --dmi-table", r)
	})
}
