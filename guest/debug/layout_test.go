package debug

import (
	"bytes"
	"strings"
	"testing"
)

// TestTableLayout: piped (Width 0) nothing is shortened; on a narrow
// terminal only the name shrinks, never the path; NoLegend drops the
// headings; a writer that says nothing gets the 80-column console.
func TestTableLayout(t *testing.T) {
	name := strings.Repeat("n", 70)
	path := "/dev/shm/vmcred-demo.ABCDEF/" + strings.Repeat("p", 40) + "/credstore"
	table := func() table {
		tb := table{cols: []column{{head: "NAME", flex: true, min: 12}, {head: "SIZE", right: true}, {head: "SERVED FROM"}}}
		tb.add(printable(name, wholeName), humanSize(3<<20), path)
		return tb
	}
	tests := []struct {
		name     string
		lay      *Layout
		wantName bool
		heading  bool
	}{
		{"piped", &Layout{}, true, true},
		{"terminal of 100", &Layout{Width: 100}, false, true},
		{"plain writer", nil, false, true},
		{"no legend", &Layout{NoLegend: true}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			tb := table()
			if tt.lay != nil {
				tb.write(&LayoutWriter{Writer: &b, Layout: *tt.lay})
			} else {
				tb.write(&b)
			}
			out := b.String()
			if !strings.Contains(out, path) {
				t.Errorf("the path was cut:\n%s", out)
			}
			if strings.Contains(out, name) != tt.wantName {
				t.Errorf("whole name shown: %v, want %v:\n%s", !tt.wantName, tt.wantName, out)
			}
			if strings.Contains(out, "SERVED FROM") != tt.heading {
				t.Errorf("heading shown: %v, want %v", !tt.heading, tt.heading)
			}
			if !strings.Contains(out, "3.0M") {
				t.Errorf("size not human:\n%s", out)
			}
		})
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 64: "64B", 1023: "1023B", 1024: "1.0K", 1536: "1.5K", 100 << 10: "100K", 3 << 20: "3.0M", 5<<30 + 1<<29: "5.5G"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
