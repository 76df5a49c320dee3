package emit

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/vmcred/vmcred/host/plan"
)

// DocumentVersion is the version of the JSON document's layout.
const DocumentVersion = 1

// Document is the JSON plan (`pack --hypervisor json`): everything a
// launcher or Nix needs to start the VM, and never a value (not even
// base64 of one).
type Document struct {
	Version    int             `json:"version"`
	VM         string          `json:"vm"`
	Hypervisor plan.Hypervisor `json:"hypervisor"`
	Mode       plan.Mode       `json:"mode"`
	Overflow   plan.Overflow   `json:"overflow"`
	RuntimeDir string          `json:"runtime_dir,omitempty"`
	// Credentials are the planned items in OEM string order, each with the
	// file that carries it, if any.
	Credentials []DocumentItem `json:"credentials"`
	// Args are the arguments to append to the hypervisor's command line.
	Args     []string       `json:"args"`
	Files    []File         `json:"files"`
	API      *APIRequest    `json:"api,omitempty"`
	Usage    plan.Usage     `json:"usage"`
	Warnings []plan.Warning `json:"warnings"`
}

// DocumentItem is one credential in a Document.
type DocumentItem struct {
	plan.Item
	// File is the payload file carrying it, if it has its own.
	File string `json:"file,omitempty"`
}

// NewDocument describes r. It refuses a result whose arguments hold a
// secret (a plan made with InlineSecrets), since the document must never
// hold a value.
func NewDocument(r *Result) (*Document, error) {
	p := r.Plan
	for _, it := range p.Items {
		if it.Secret && it.Carrier == plan.CarrierArgv {
			return nil, fmt.Errorf("%w: credential %q is a secret on the command line; the JSON plan never holds values (drop --inline-secrets)", ErrOption, it.Name)
		}
	}
	files := map[string]string{}
	for _, f := range r.Files {
		if f.Name != "" {
			files[f.Name] = f.Path
		}
	}
	d := &Document{
		Version: DocumentVersion, VM: p.VM, Hypervisor: p.Hypervisor, Mode: p.Mode, Overflow: p.Overflow,
		RuntimeDir: r.RuntimeDir, Args: r.Args, Files: r.Files, API: r.API,
		Usage: p.Usage, Warnings: p.Warnings, Credentials: []DocumentItem{},
	}
	for _, it := range p.Items {
		d.Credentials = append(d.Credentials, DocumentItem{Item: it, File: files[it.Name]})
	}
	return d, nil
}

// MarshalIndent returns the document as indented JSON with a final newline.
func (d *Document) MarshalIndent() ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}
