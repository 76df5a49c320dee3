package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/shared/manifest"
)

// canaryNames are every credential name the scenarios use, plus one that
// exists nowhere.
var canaryNames = []string{"api-key", "db-password", "jwt-secret", "ENVIRONMENT", "tls-key", "debug-token",
	"vmm.notify_socket", "vmcred.manifest", "CLUSTER", "CLUSTER1", "CLUSTER12", "nowhere"}

// canaryArgs are the command lines that must never print a value: every
// debug command and the flags that change what they read or print.
func canaryArgs(tr *tree) [][]string {
	dmi := tr.path("sys/firmware/dmi/tables/DMI")
	other := filepath.Join(tr.root, "other-trust")
	args := [][]string{
		{"list"}, {"list", "--json"},
		{"list", "--credstore", "/run/credstore"}, {"list", "--credstore", "/run/credstore", "--json"},
		{"list", "--credstore", "/run/credentials/@system"}, {"list", "--credstore", "/etc/credstore", "--json"},
		{"list", "--status-dir", "/run/vmcred", "--credstore", "/run/credstore"},
		{"list", "--dmi-table", dmi}, {"list", "--dmi-table", dmi, "--json"},
		{"list", "--system-credentials", "", "--json"},
		{"list", "--search-path", "/run/credstore,/run/credentials/@system"},
		{"verify"}, {"verify", "--json"}, {"verify", "--dmi-table", dmi},
		{"verify", "--allow-unverified", "--json"}, {"verify", "--vm", "other"},
		{"verify", "--system-credentials", ""}, {"verify", "--trust-key", other},
		{"status"}, {"status", "--json"},
		{"list", "--help"}, {"show", "--help"}, {"verify", "--help"}, {"status", "--help"},
		{"show"}, {"show", "bad/name"}, {"show", "api-key", "--reveal", "--json"},
		{"load", "--dmi-table", dmi, "--credstore", filepath.Join(tr.root, "load-store"), "--status-dir", filepath.Join(tr.root, "load-status"),
			"--allow-persistent", "--system-credentials", tr.path("run/credentials/@system"), "--trust-key", tr.path("etc/vmcred/trusted.d")},
		{"load", "--dmi-table", dmi, "--credstore", filepath.Join(tr.root, "load-store2"), "--status-dir", filepath.Join(tr.root, "load-status2"),
			"--allow-persistent", "--allow-unverified"},
	}
	for _, n := range canaryNames {
		args = append(args, []string{"show", n}, []string{"show", n, "--json"}, []string{"show", n, "--dmi-table", dmi, "--json"},
			[]string{"show", n, "--system-credentials", ""}, []string{"show", n, "--trust-key", other})
	}
	return args
}

// leaks returns how a value shows up in out, if it does: raw, in base64
// (padded, unpadded, URL-safe) or in hex, whole or as a 16-byte window at
// its start, middle or end (a truncated or partial copy).
func leaks(out, v []byte) string {
	pieces := [][]byte{v}
	if len(v) > 16 {
		pieces = append(pieces, v[:16], v[len(v)/2-8:len(v)/2+8], v[len(v)-16:])
	}
	for i, p := range pieces {
		forms := map[string]string{
			"raw":             string(p),
			"base64":          base64.StdEncoding.EncodeToString(p),
			"unpadded base64": base64.RawStdEncoding.EncodeToString(p),
			"url base64":      base64.URLEncoding.EncodeToString(p),
			"hex":             hex.EncodeToString(p),
			"HEX":             strings.ToUpper(hex.EncodeToString(p)),
		}
		for form, s := range forms {
			if strings.Contains(string(out), s) {
				return fmt.Sprintf("%s of piece %d", form, i)
			}
		}
	}
	return ""
}

// TestNoCommandPrintsAValue runs every debug command, and the flag
// combinations that change what they read, over every fixture filled with
// random canaries, and checks that neither stdout nor stderr holds one in
// any common encoding. show --reveal is the positive control: its output
// must be exactly the value.
func TestNoCommandPrintsAValue(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			tr := build(t, sc.name, randomValue)
			// A trust folder with a key the manifests are not signed with.
			pub, err := manifest.MarshalPublicKey(key(9).Public().(ed25519.PublicKey))
			if err != nil {
				t.Fatal(err)
			}
			tr.write("other-trust/other.pub", pub, 0o444)
			d := tr.defaults()
			runs := 0
			for _, args := range canaryArgs(tr) {
				r := run(d, args...)
				runs++
				for i, v := range tr.values {
					if how := leaks(append(r.stdout, r.stderr...), v); how != "" {
						t.Errorf("vmcred-guest %s printed value %d (%d bytes) as %s", strings.Join(args, " "), i, len(v), how)
					}
				}
			}
			if runs < 50 {
				t.Fatalf("only %d runs", runs)
			}
		})
	}
}

// TestRevealPrintsExactlyTheServedValue: show --reveal prints the file
// LoadCredential= would pick, byte for byte, with no newline and nothing
// on stderr; that is systemd's short copy when @system holds one.
func TestRevealPrintsExactlyTheServedValue(t *testing.T) {
	tests := []struct {
		scenario, name string
		file           string // the file LoadCredential= picks, in the tree
		code           int
	}{
		{"good", "api-key", "run/credstore/api-key", 0},
		{"good", "ENVIRONMENT", "run/credstore/ENVIRONMENT", 0},
		{"truncated", "tls-key", "run/credentials/@system/tls-key", 0},
		{"shadowed", "db-password", "etc/credstore/db-password", 0},
		{"failed", "jwt-secret", "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.scenario+"/"+tc.name, func(t *testing.T) {
			tr := build(t, tc.scenario, randomValue)
			r := run(tr.defaults(), "show", tc.name, "--reveal")
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %s", r.code, tc.code, r.stderr)
			}
			if tc.file == "" {
				if len(r.stdout) != 0 {
					t.Errorf("printed %d bytes for a credential no folder holds", len(r.stdout))
				}
				return
			}
			want, err := os.ReadFile(tr.path(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if leaks(r.stdout, want) == "" {
				t.Error("the leak detector does not see the revealed value")
			}
			if !bytes.Equal(r.stdout, want) {
				t.Errorf("--reveal printed %d bytes, want the %d bytes of %s exactly", len(r.stdout), len(want), tc.file)
			}
			if len(r.stderr) != 0 {
				t.Errorf("stderr not empty: %q", r.stderr)
			}
		})
	}
}
