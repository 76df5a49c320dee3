package oemstring

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmcred/vmcred/shared/credential"
)

// got is a printable summary of a Result: test values here are public
// vectors, so comparing them directly is fine.
type got struct {
	Creds   map[string]string
	Skipped []Reason
}

func summarize(r Result) got {
	g := got{Creds: map[string]string{}}
	for _, e := range r.Entries {
		g.Creds[e.Name] = string(e.Value.Reveal())
	}
	for _, s := range r.Skipped {
		g.Skipped = append(g.Skipped, s.Reason)
	}
	return g
}

// TestSystemdVectors covers every vector and edge row in
// reference/systemd-creds.md §6 that concerns SMBIOS OEM strings.
func TestSystemdVectors(t *testing.T) {
	name255 := strings.Repeat("n", 255)
	name256 := strings.Repeat("n", 256)
	tests := []struct {
		name string
		in   []string
		want got
	}{
		{"S1 text", []string{"io.systemd.credential:smbioscredential=magicdata"}, got{Creds: map[string]string{"smbioscredential": "magicdata"}}},
		{"S2 binary", []string{"io.systemd.credential.binary:binarysmbioscredential=bWFnaWNiaW5hcnlkYXRh"}, got{Creds: map[string]string{"binarysmbioscredential": "magicbinarydata"}}},
		{"S3 sysusers", []string{"io.systemd.credential.binary:sysusers.extra=dSBjcmVkdGVzdHVzZXIK"}, got{Creds: map[string]string{"sysusers.extra": "u credtestuser\n"}}},
		{"S4 tmpfiles", []string{"io.systemd.credential.binary:tmpfiles.extra=ZiAvdG1wL3NvdXJjZWRmcm9tY3JlZGVudGlhbCAtIC0gLSAtIHRtcGZpbGVzc2VjcmV0Cg=="}, got{Creds: map[string]string{"tmpfiles.extra": "f /tmp/sourcedfromcredential - - - - tmpfilessecret\n"}}},
		{"S5 fstab", []string{"io.systemd.credential.binary:fstab.extra=aW5qZWN0ZWQgL2luamVjdGVkIHRtcGZzIFgtbW91bnQubWtkaXIgMCAwCg=="}, got{Creds: map[string]string{"fstab.extra": "injected /injected tmpfs X-mount.mkdir 0 0\n"}}},
		{"S6 getty", []string{"io.systemd.credential:getty.ttys.container=idontexist"}, got{Creds: map[string]string{"getty.ttys.container": "idontexist"}}},
		{"S7 extra unit", []string{
			"io.systemd.credential.binary:systemd.extra-unit.my-service.service=" + b64("[Service]\nType=oneshot\nExecStart=touch /tmp/unit-cred\n"),
			"io.systemd.credential.binary:systemd.unit-dropin.my-service.service~30-named.service=" + b64("[Service]\nExecStart=\nExecStart=touch /tmp/unit-dropin\n"),
		}, got{Creds: map[string]string{
			"systemd.extra-unit.my-service.service":                   "[Service]\nType=oneshot\nExecStart=touch /tmp/unit-cred\n",
			"systemd.unit-dropin.my-service.service~30-named.service": "[Service]\nExecStart=\nExecStart=touch /tmp/unit-dropin\n",
		}}},
		{"man xx", []string{"io.systemd.credential:xx=yy"}, got{Creds: map[string]string{"xx": "yy"}}},
		{"man rick", []string{"io.systemd.credential.binary:rick=TmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXA="}, got{Creds: map[string]string{"rick": "Never Gonna Give You Up"}}},
		{"docs foo", []string{"io.systemd.credential.binary:foo=YmFyCg=="}, got{Creds: map[string]string{"foo": "bar\n"}}},
		{"notify socket kept verbatim", []string{"io.systemd.credential:vmm.notify_socket=vsock:2:1234"}, got{Creds: map[string]string{"vmm.notify_socket": "vsock:2:1234"}}},
		{"no equals", []string{"io.systemd.credential:noequals"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonNoEquals}}},
		{"empty name", []string{"io.systemd.credential:=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"colon in name", []string{"io.systemd.credential:a:b=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"slash in name", []string{"io.systemd.credential:../x=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"dot name", []string{"io.systemd.credential:.=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"dotdot name", []string{"io.systemd.credential:..=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"space in name accepted", []string{"io.systemd.credential:a b=v"}, got{Creds: map[string]string{"a b": "v"}}},
		{"value with equals", []string{"io.systemd.credential:k=a=b"}, got{Creds: map[string]string{"k": "a=b"}}},
		{"empty text value", []string{"io.systemd.credential:e="}, got{Creds: map[string]string{"e": ""}}},
		{"empty binary value", []string{"io.systemd.credential.binary:e="}, got{Creds: map[string]string{"e": ""}}},
		{"case-sensitive prefix", []string{"IO.SYSTEMD.CREDENTIAL:x=y"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonNoPrefix}}},
		{"other vendor string", []string{"io.systemd.stub.kernel-cmdline-extra=quiet"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonNoPrefix}}},
		{"vmcred prefix ignored by default", []string{"io.vmcred.credential.binary:x=Zm9v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonNoPrefix}}},
		{"binary foo", []string{"io.systemd.credential.binary:b=Zm9v"}, got{Creds: map[string]string{"b": "foo"}}},
		{"missing padding", []string{"io.systemd.credential.binary:b=Zm9"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadBase64}}},
		{"group starting with pad", []string{"io.systemd.credential.binary:b=Zm9v==="}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadBase64}}},
		{"pad bits zero", []string{"io.systemd.credential.binary:b=Zm8="}, got{Creds: map[string]string{"b": "fo"}}},
		{"pad bits non-zero", []string{"io.systemd.credential.binary:b=Zm9="}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadBase64}}},
		{"data after padding", []string{"io.systemd.credential.binary:b=Zm8=Zm8="}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadBase64}}},
		{"pad then non-pad in group", []string{"io.systemd.credential.binary:b=Zg=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadBase64}}},
		{"whitespace skipped", []string{"io.systemd.credential.binary:b=Zm 9v\n"}, got{Creds: map[string]string{"b": "foo"}}},
		{"whitespace everywhere", []string{"io.systemd.credential.binary:b= \tZ\rm8\n= \n"}, got{Creds: map[string]string{"b": "fo"}}},
		{"url-safe accepted", []string{"io.systemd.credential.binary:u=-_8=", "io.systemd.credential.binary:s=+/8="}, got{Creds: map[string]string{"u": "\xfb\xff", "s": "\xfb\xff"}}},
		{"duplicate first wins", []string{"io.systemd.credential:k=first", "io.systemd.credential.binary:k=" + b64("second")}, got{Creds: map[string]string{"k": "first"}, Skipped: []Reason{ReasonDuplicate}}},
		{"255-byte name accepted", []string{"io.systemd.credential:" + name255 + "=v"}, got{Creds: map[string]string{name255: "v"}}},
		{"256-byte name skipped", []string{"io.systemd.credential:" + name256 + "=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"control byte in name", []string{"io.systemd.credential:a\tb=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"high byte in name", []string{"io.systemd.credential:caf\xc3\xa9=v"}, got{Creds: map[string]string{}, Skipped: []Reason{ReasonBadName}}},
		{"text value byte-exact", []string{"io.systemd.credential:t= lead\ntrail \xff"}, got{Creds: map[string]string{"t": " lead\ntrail \xff"}}},
		{"empty string ignored", []string{"", "io.systemd.credential:a=1"}, got{Creds: map[string]string{"a": "1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewParser()
			p.AddStrings("smbios", tt.in)
			if diff := cmp.Diff(tt.want, summarize(p.Result())); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestIndexesAndSources(t *testing.T) {
	p := NewParser(AllPrefixes...)
	p.AddRaw("fw_cfg", "k", []byte("from-fwcfg"))
	p.AddStrings("smbios", []string{
		"io.systemd.credential:k=from-smbios",
		"garbage",
		"io.vmcred.credential.binary:v=" + b64("vm"),
	})
	r := p.Result()
	wantEntries := []string{"fw_cfg/k@0", "smbios/v@3"}
	var gotEntries []string
	for _, e := range r.Entries {
		gotEntries = append(gotEntries, fmt.Sprintf("%s/%s@%d", e.Source, e.Name, e.Index))
	}
	if diff := cmp.Diff(wantEntries, gotEntries); diff != "" {
		t.Errorf("entries (-want +got)\n%s", diff)
	}
	wantSkips := []Skip{
		{Index: 1, Source: "smbios", Name: "k", Prefix: PrefixText, Reason: ReasonDuplicate},
		{Index: 2, Source: "smbios", Reason: ReasonNoPrefix},
	}
	if diff := cmp.Diff(wantSkips, r.Skipped); diff != "" {
		t.Errorf("skipped (-want +got)\n%s", diff)
	}
	if string(r.Entries[0].Value.Reveal()) != "from-fwcfg" {
		t.Errorf("fw_cfg copy should win over smbios")
	}
}

func TestSizeLimits(t *testing.T) {
	big := bytes.Repeat([]byte{'x'}, credential.MaxSize+1)
	half := bytes.Repeat([]byte{'y'}, credential.MaxSize/2+1)
	small := []byte("small")
	p := NewParser()
	p.AddRaw("fw_cfg", "big", big)                                              // over 1 MiB: skipped
	p.AddString("smbios", "io.systemd.credential.binary:h1="+b64(string(half))) // taken
	p.AddString("smbios", "io.systemd.credential.binary:h2="+b64(string(half))) // would cross the total: skipped
	p.AddString("smbios", "io.systemd.credential.binary:h1="+b64(string(half))) // duplicate, but too large first, as in systemd
	p.AddString("smbios", "io.systemd.credential.binary:s="+b64(string(small))) // later smaller ones still fit
	r := p.Result()
	if diff := cmp.Diff(got{
		Creds:   map[string]string{"h1": string(half), "s": "small"},
		Skipped: []Reason{ReasonTooLarge, ReasonTotalTooLarge, ReasonTotalTooLarge},
	}, summarize(r)); diff != "" {
		t.Errorf("(-want +got)\n%s", diff)
	}
	if r.Total != len(half)+len(small) {
		t.Errorf("total = %d, want %d", r.Total, len(half)+len(small))
	}
	// Exactly 1 MiB in one credential is allowed.
	p = NewParser()
	p.AddRaw("fw_cfg", "max", bytes.Repeat([]byte{'z'}, credential.MaxSize))
	if n := len(p.Result().Entries); n != 1 {
		t.Errorf("a 1 MiB credential was not taken")
	}
}

func TestDecodeBase64ErrorsNameNoData(t *testing.T) {
	secret := "c2VjcmV0c2VjcmV0c2VjcmV0!!!"
	_, err := DecodeBase64(secret)
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.Contains(err.Error(), "c2VjcmV0") {
		t.Errorf("error %q echoes the input", err)
	}
}

func TestFormatRoundTrip(t *testing.T) {
	values := [][]byte{{}, []byte("a"), []byte("ab"), []byte("abc"), []byte("a,b,,c[]\"\n"), bytes.Repeat([]byte{0, 0xff}, 7500)}
	for _, prefix := range []string{PrefixBinary, PrefixVmcred} {
		for i, v := range values {
			s, err := Format(prefix, "name with space", credential.NewSecret(v))
			if err != nil {
				t.Fatalf("format: %v", err)
			}
			str := string(s.Reveal())
			if len(str) != FormattedLen(prefix, "name with space", len(v)) {
				t.Errorf("value %d: FormattedLen disagrees with Format", i)
			}
			if strings.ContainsAny(str, ",[]\"\n\x00") {
				t.Errorf("value %d: formatted string has a character hypervisors mangle", i)
			}
			p := NewParser(AllPrefixes...)
			p.AddString("t", str)
			r := p.Result()
			if len(r.Entries) != 1 || !bytes.Equal(r.Entries[0].Value.Reveal(), v) || r.Entries[0].Prefix != prefix {
				t.Errorf("value %d (%d bytes) did not round-trip", i, len(v))
			}
		}
	}
}

func TestFormatRefuses(t *testing.T) {
	if _, err := Format(PrefixText, "x", credential.NewSecret(nil)); err == nil {
		t.Error("text prefix accepted: Format must always emit base64")
	}
	for _, name := range []string{"", ".", "a/b", "a:b", strings.Repeat("x", 256)} {
		if _, err := Format(PrefixBinary, name, credential.NewSecret([]byte("v"))); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"io.systemd.credential:k=v", "io.systemd.credential.binary:b=Zm9v", "io.systemd.credential.binary:b=Zm9=",
		"io.vmcred.credential.binary:x= Zm 8=", "io.systemd.credential:=", "io.systemd.credential:a:b=c", "junk",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p := NewParser(AllPrefixes...)
		p.AddString("f", s)
		r := p.Result()
		if len(r.Entries)+len(r.Skipped) > 1 {
			t.Fatalf("one string gave %d results", len(r.Entries)+len(r.Skipped))
		}
		for _, e := range r.Entries {
			if err := credential.ValidateName(e.Name); err != nil {
				t.Fatalf("accepted an invalid name: %v", err)
			}
			if !IsBinary(e.Prefix) {
				continue
			}
			// Round trip: what we accepted re-encodes and parses to the same bytes.
			out, err := Format(e.Prefix, e.Name, e.Value)
			if err != nil {
				t.Fatalf("re-format: %v", err)
			}
			q := NewParser(AllPrefixes...)
			q.AddString("f", string(out.Reveal()))
			if rr := q.Result(); len(rr.Entries) != 1 || !bytes.Equal(rr.Entries[0].Value.Reveal(), e.Value.Reveal()) {
				t.Fatalf("round trip changed the value")
			}
		}
	})
}

// TestSkippedAggregated: past MaxSkipped, skipped strings are counted by
// reason, not recorded one by one (issue 17, finding 7).
func TestSkippedAggregated(t *testing.T) {
	p := NewParser()
	for i := range 100_000 {
		p.AddString("smbios", string(rune('a'+i%26)))
	}
	p.AddString("smbios", PrefixText+"no-equals")
	p.AddString("smbios", PrefixText+"ok=1")
	r := p.Result()
	if len(r.Entries) != 1 || r.SkippedTotal != 100_001 || r.SkippedUnnamed() != 100_001-MaxSkipped {
		t.Fatalf("%d entries, %d skipped, %d unnamed", len(r.Entries), r.SkippedTotal, r.SkippedUnnamed())
	}
	want := []Skip{{Index: -1, Reason: ReasonNoPrefix, Count: 100_000 - MaxSkipped}, {Index: -1, Reason: ReasonNoEquals, Count: 1}}
	if diff := cmp.Diff(want, r.Skipped[MaxSkipped:]); diff != "" || r.Skipped[MaxSkipped-1].Index != MaxSkipped-1 {
		t.Errorf("summary records (-want +got):\n%s", diff)
	}
	if r.SkippedByReason[ReasonNoPrefix] != 100_000 || r.SkippedByReason[ReasonNoEquals] != 1 {
		t.Errorf("by reason: %v", r.SkippedByReason)
	}
}
