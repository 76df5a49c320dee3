package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/smbios"
)

type listJSON struct {
	Credentials []struct {
		Name   string `json:"name"`
		Size   int    `json:"size"`
		SHA256 string `json:"sha256"`
		Source string `json:"source"`
		Prefix string `json:"prefix"`
	} `json:"credentials"`
	Skipped []struct {
		Index  int    `json:"index"`
		Reason string `json:"reason"`
	} `json:"skipped"`
}

// TestListAgreesWithSystemd feeds `vmcred-guest list --json` a table holding
// the reference vectors and checks each credential and skip as systemd's
// parse_smbios_strings would decide it.
func TestListAgreesWithSystemd(t *testing.T) {
	name255 := strings.Repeat("n", 255)
	big := strings.Repeat("0123456789abcde", 1000) // 15,000 bytes
	first := []string{
		"io.systemd.credential:a b=space in name",         // accepted
		"io.systemd.credential:k=a=b",                     // value a=b
		"io.systemd.credential:e=",                        // empty value
		"io.systemd.credential.binary:pad=Zm9",            // skipped: missing padding
		"io.systemd.credential.binary:bits=Zm9=",          // skipped: non-zero pad bits
		"io.systemd.credential.binary:after=Zm8=Zm8=",     // skipped: data after padding
		"io.systemd.credential.binary:ws=Zm 9v\n",         // foo
		"io.systemd.credential:" + name255 + "=long name", // accepted
		"io.systemd.credential:" + name255 + "n=too long", // skipped
		"io.systemd.credential:dup=first",                 // accepted
		"io.systemd.credential:dup=second",                // skipped: duplicate
		"io.systemd.credential:noequals",                  // skipped
		"io.systemd.credential:big=" + big,                // 15 KB intact
		"IO.SYSTEMD.CREDENTIAL:case=x",                    // skipped: not a credential
		"io.systemd.credential.binary:rick=TmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXA=",
	}
	second := []string{
		"io.systemd.credential:dup=third",  // skipped: duplicate across structures
		"io.systemd.credential:later=fine", // accepted
	}
	var tab []byte
	tab = smbios.AppendStructure(tab, 11, 0x0e00, []byte{byte(len(first))}, first)
	tab = smbios.AppendStructure(tab, 11, 0x0e01, []byte{byte(len(second))}, second)
	tab = smbios.AppendStructure(tab, 127, 0x7f00, nil, nil)
	path := filepath.Join(t.TempDir(), "DMI")
	if err := os.WriteFile(path, tab, 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, built.guest, nil, "list", "--json", "--dmi-table", path)
	if r.code != 0 {
		t.Fatalf("list exited %d: %s", r.code, r.stderr)
	}
	var got listJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("decode list --json: %v", err)
	}
	sizes := map[string]int{}
	for _, c := range got.Credentials {
		sizes[c.Name] = c.Size
		if len(c.SHA256) != 64 || c.Source != "smbios" {
			t.Errorf("%q: sha256 %q source %q", c.Name, c.SHA256, c.Source)
		}
	}
	wantSizes := map[string]int{
		"a b": len("space in name"), "k": 3, "e": 0, "ws": 3, name255: len("long name"),
		"dup": len("first"), "big": 15000, "rick": 23, "later": 4,
	}
	if diff := cmp.Diff(wantSizes, sizes); diff != "" {
		t.Errorf("credentials (-want +got)\n%s", diff)
	}
	var skips []string
	for _, s := range got.Skipped {
		skips = append(skips, fmt.Sprintf("%d:%s", s.Index, s.Reason))
	}
	wantSkips := []string{
		"3:value is not valid base64", "4:value is not valid base64", "5:value is not valid base64",
		"8:name is not valid", "10:credential set twice, first one wins", "11:lacks '=' character",
		"13:not a credential string", "15:credential set twice, first one wins",
	}
	if diff := cmp.Diff(wantSkips, skips); diff != "" {
		t.Errorf("skipped (-want +got)\n%s", diff)
	}
	if strings.Contains(r.stdout, "space in name") || strings.Contains(r.stdout, big[:30]) {
		t.Error("list printed a value")
	}
}

// TestList300Strings: QEMU wraps the count byte past 255; every string is
// still read.
func TestList300Strings(t *testing.T) {
	var strs []string
	for i := 0; i < 300; i++ {
		strs = append(strs, fmt.Sprintf("io.systemd.credential:c%03d=v%d", i, i))
	}
	var tab []byte
	tab = smbios.AppendStructure(tab, 11, 0x0e00, []byte{byte(len(strs) % 256)}, strs)
	tab = smbios.AppendStructure(tab, 127, 0x7f00, nil, nil)
	path := filepath.Join(t.TempDir(), "DMI")
	if err := os.WriteFile(path, tab, 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, built.guest, nil, "list", "--json", "--dmi-table", path)
	var got listJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 {
		t.Fatalf("list: code %d, %v, %s", r.code, err, r.stderr)
	}
	if len(got.Credentials) != 300 || got.Credentials[299].Name != "c299" {
		t.Fatalf("got %d credentials", len(got.Credentials))
	}
}
