package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenCase is one command over one scenario.
type goldenCase struct {
	scenario string
	file     string // golden file name, without .txt or .json
	args     []string
	code     int // exit code, text and JSON alike
}

// goldenCases: every debug command, human and JSON, over every fixture.
func goldenCases() []goldenCase {
	return []goldenCase{
		{"good", "list", []string{"list"}, 0},
		{"good", "list-credstore", []string{"list", "--credstore", "/run/credstore"}, 0},
		{"good", "list-firmware", []string{"list", "--dmi-table", "@/sys/firmware/dmi/tables/DMI"}, 0},
		{"good", "show-api-key", []string{"show", "api-key"}, 0},
		{"good", "show-unknown", []string{"show", "API-KEY"}, 1},
		{"good", "verify", []string{"verify"}, 0},
		{"good", "status", []string{"status"}, 0},

		{"failed", "list", []string{"list"}, 0},
		{"failed", "show-api-key", []string{"show", "api-key"}, 0},
		{"failed", "show-jwt-secret", []string{"show", "jwt-secret"}, 0},
		{"failed", "verify", []string{"verify"}, 1},
		{"failed", "status", []string{"status"}, 1},

		{"truncated", "list", []string{"list"}, 0},
		{"truncated", "show-tls-key", []string{"show", "tls-key"}, 0},
		{"truncated", "verify", []string{"verify"}, 1},
		{"truncated", "status", []string{"status"}, 1},

		{"unknown-key", "list", []string{"list"}, 0},
		{"unknown-key", "show-api-key", []string{"show", "api-key"}, 0},
		{"unknown-key", "verify", []string{"verify"}, 1},
		{"unknown-key", "status", []string{"status"}, 1},

		{"shadowed", "list", []string{"list"}, 0},
		{"shadowed", "show-db-password", []string{"show", "db-password"}, 0},
		{"shadowed", "verify", []string{"verify"}, 1},

		{"session", "list", []string{"list"}, 0},
		{"session", "show-api-key", []string{"show", "api-key"}, 0},
		{"session", "verify", []string{"verify"}, 0},
		{"session", "status", []string{"status"}, 0},

		{"rotated", "list", []string{"list"}, 0},
		{"rotated", "status", []string{"status"}, 0},

		{"no-status", "list", []string{"list"}, 3},
		{"no-status", "show-api-key", []string{"show", "api-key"}, 0},
		{"no-status", "verify", []string{"verify"}, 1},
		{"no-status", "status", []string{"status"}, 3},
	}
}

// expand turns "@/rel" arguments into paths inside the tree.
func (tr *tree) expand(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if rel, ok := strings.CutPrefix(a, "@/"); ok {
			a = tr.path(rel)
		}
		out[i] = a
	}
	return out
}

// TestGolden runs each debug command over each fixture and compares its
// output, human and JSON, with testdata/golden/SCENARIO/FILE.{txt,json}.
// Human output must fit an 80-column console.
func TestGolden(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			tr := build(t, sc.name, fixedValue)
			for _, gc := range goldenCases() {
				if gc.scenario != sc.name {
					continue
				}
				t.Run(gc.file, func(t *testing.T) { checkGolden(t, tr, gc) })
			}
		})
	}
}

func checkGolden(t *testing.T, tr *tree, gc goldenCase) {
	for _, format := range []string{"txt", "json"} {
		args := tr.expand(gc.args)
		if format == "json" {
			args = append(args, "--json")
		}
		// Laid out for the 80-column serial console; piped output has
		// no width limit (TestPipedOutputIsWhole).
		d := tr.defaults()
		d.terminal = fakeTerminal(80)
		r := run(d, args...)
		if r.code != gc.code {
			t.Errorf("%s: exit %d, want %d; stderr:\n%s", format, r.code, gc.code, tr.normalize(r.stderr))
		}
		got := tr.normalize(r.stdout)
		if format == "json" && !json.Valid(got) {
			t.Errorf("json: output is not one JSON document:\n%s", got)
		}
		if format == "txt" {
			if l, long := hasLongLine(string(got)); long {
				t.Errorf("txt: line wider than 80 columns (%d):\n%s", len([]rune(l)), l)
			}
		}
		golden := filepath.Join("testdata", "golden", gc.scenario, gc.file+"."+format)
		if *update {
			if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test -update to create it)", err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s differs (-want +got):\n%s", golden, diff)
		}
	}
}

// TestGoldenFilesFit80Columns checks every human golden file on disk, so a
// hand-edited one cannot slip past.
func TestGoldenFilesFit80Columns(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "golden", "*", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files (%v)", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if l, long := hasLongLine(string(b)); long {
			t.Errorf("%s: line wider than 80 columns:\n%s", f, l)
		}
		if bytes.Contains(b, []byte("\t")) {
			t.Errorf("%s: holds a tab; the layout must not depend on tab stops", f)
		}
	}
}
