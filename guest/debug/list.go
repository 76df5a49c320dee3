// Package debug renders what the guest agent knows for a person or a script:
// the tables and JSON of `vmcred-guest list`, `show`, `verify` and `status`.
// It never renders a value. Guest packages only.
package debug

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/vmcred/vmcred/guest/firmware"
)

// Credential is one row of `list`: metadata only.
type Credential struct {
	Name     string `json:"name"`
	Size     int    `json:"size"`
	SHA256   string `json:"sha256"`           // 64 hex digits of the value
	Source   string `json:"source"`           // "smbios", "fw_cfg" or "channel"
	Prefix   string `json:"prefix,omitempty"` // OEM string prefix; empty for fw_cfg
	Index    int    `json:"index"`            // position among the strings read
	Verified string `json:"verified"`         // "signature", "digest" or "no"
	Exposed  string `json:"exposed,omitempty"`
}

// Skipped is a string that was not taken as a credential.
type Skipped struct {
	Index  int    `json:"index"`
	Source string `json:"source"`
	Name   string `json:"name,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
}

// List is the output of `vmcred-guest list`.
type List struct {
	Credentials []Credential      `json:"credentials"`
	Skipped     []Skipped         `json:"skipped"`
	Sources     []firmware.Status `json:"sources,omitempty"`
}

// ListFromFirmware builds a List from what firmware.Read parsed. verified
// maps a credential name to how it was verified; names not in it show "no".
func ListFromFirmware(rep firmware.Report, verified map[string]string) List {
	l := List{Credentials: []Credential{}, Skipped: []Skipped{}, Sources: rep.Sources}
	for _, e := range rep.Parsed.Entries {
		sum := e.Value.SHA256()
		v := verified[e.Name]
		if v == "" {
			v = "no"
		}
		l.Credentials = append(l.Credentials, Credential{
			Name: e.Name, Size: e.Value.Len(), SHA256: hex.EncodeToString(sum[:]),
			Source: e.Source, Prefix: e.Prefix, Index: e.Index, Verified: v,
		})
	}
	for _, s := range rep.Parsed.Skipped {
		l.Skipped = append(l.Skipped, Skipped{Index: s.Index, Source: s.Source, Name: s.Name, Prefix: s.Prefix, Reason: string(s.Reason), Detail: s.Detail})
	}
	return l
}

// WriteJSON writes l as one indented JSON object.
func (l List) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(l)
}

// WriteText writes l as an aligned table for an 80-column console, like
// `systemd-creds list`, followed by the skipped strings and source notes.
func (l List) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tSIZE\tSHA256\tVERIFIED")
	for _, c := range l.Credentials {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s…\t%s\n", printable(c.Name, 32), c.Source, c.Size, c.SHA256[:12], c.Verified)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d credentials", len(l.Credentials))
	if len(l.Skipped) > 0 {
		fmt.Fprintf(w, ", %d strings skipped:\n", len(l.Skipped))
		for _, s := range l.Skipped {
			name := ""
			if s.Name != "" {
				name = " " + printable(s.Name, 40)
			}
			detail := ""
			if s.Detail != "" {
				detail = " (" + s.Detail + ")"
			}
			fmt.Fprintf(w, "  #%d %s%s: %s%s\n", s.Index, s.Source, name, s.Reason, detail)
		}
	} else {
		fmt.Fprintln(w, ".")
	}
	for _, src := range l.Sources {
		for _, n := range src.Notes {
			fmt.Fprintf(w, "note: %s\n", n)
		}
		if src.Fault != "" {
			fmt.Fprintf(w, "fault: %s\n", src.Fault)
		}
	}
	return nil
}

// printable quotes names with unusual bytes and shortens long ones so the
// table stays aligned.
func printable(s string, max int) string {
	if strings.ContainsAny(s, " \t") {
		s = fmt.Sprintf("%q", s)
	}
	if len(s) > max {
		s = s[:max-1] + "…"
	}
	return s
}
