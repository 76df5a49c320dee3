package source

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/vmcred/vmcred/shared/cli"
)

func parse(t *testing.T, args ...string) ([]Spec, error) {
	t.Helper()
	var f Flags
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("pflag parse: %v", err)
	}
	return f.Specs()
}

func TestSpecs(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []Spec
	}{
		{
			name: "none",
			args: nil,
			want: nil,
		},
		{
			name: "cred",
			args: []string{"--cred", "api-key=file:/run/secrets/vars/per-machine/host/test-vm-secrets/api-key"},
			want: []Spec{{Kind: File, Name: "api-key", Path: "/run/secrets/vars/per-machine/host/test-vm-secrets/api-key"}},
		},
		{
			name: "cred name with = and path with commas and =file:",
			args: []string{"--cred=a=b=file:/x,y=file:z"},
			want: []Spec{{Kind: File, Name: "a=b", Path: "/x,y=file:z"}},
		},
		{
			name: "cred-dir",
			args: []string{"--cred-dir", "/run/secrets/vars/g", "--cred-dir=/d,with,commas"},
			want: []Spec{{Kind: Dir, Path: "/run/secrets/vars/g"}, {Kind: Dir, Path: "/d,with,commas"}},
		},
		{
			name: "bare credentials directory",
			args: []string{"--from-credentials-directory"},
			want: []Spec{{Kind: CredentialsDirectory}},
		},
		{
			name: "named credentials directory",
			args: []string{"--from-credentials-directory=api-key,db-password", "--from-credentials-directory=jwt"},
			want: []Spec{
				{Kind: CredentialsDirectory, Names: []string{"api-key", "db-password"}},
				{Kind: CredentialsDirectory, Names: []string{"jwt"}},
			},
		},
		{
			name: "static keeps = and commas in the value, allows empty",
			args: []string{"--static", "ENVIRONMENT=a=b,c", "--static", "EMPTY="},
			want: []Spec{{Kind: Static, Name: "ENVIRONMENT", Value: "a=b,c"}, {Kind: Static, Name: "EMPTY"}},
		},
		{
			name: "command-line order across flags",
			args: []string{"--static", "s=1", "--cred-dir", "/d", "--cred", "c=file:/c", "--from-credentials-directory"},
			want: []Spec{
				{Kind: Static, Name: "s", Value: "1"},
				{Kind: Dir, Path: "/d"},
				{Kind: File, Name: "c", Path: "/c"},
				{Kind: CredentialsDirectory},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(t, tt.args...)
			if err != nil {
				t.Fatalf("Specs: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Specs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSpecsErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string // substrings of the error
		not  []string // must not appear
	}{
		{"literal value", []string{"--cred", "api-key=hunter2"}, []string{`"api-key=…"`, "a literal value", "never taken literally", "LoadCredential="}, []string{"hunter2"}},
		{"env scheme", []string{"--cred", "api-key=env:API_KEY"}, []string{"the env: scheme", "never taken literally from argv or the environment"}, []string{"API_KEY"}},
		{"no equals", []string{"--cred", "hunter2"}, []string{"argument of 7 bytes is not NAME=file:PATH"}, []string{"hunter2"}},
		{"pasted base64", []string{"--cred", "aHVudGVyMg=="}, []string{"argument of 12 bytes is not NAME=file:PATH", "never taken literally"}, []string{"aHVudGVyMg"}},
		{"invalid name, literal", []string{"--cred", "hunter/2=x"}, []string{"argument of 10 bytes is not NAME=file:PATH"}, []string{"hunter"}},
		{"invalid name", []string{"--cred", "a:b=file:/x"}, []string{"--cred", `credential name "a:b"`}, nil},
		{"empty name", []string{"--cred", "=file:/x"}, []string{"empty"}, nil},
		{"empty path", []string{"--cred", "a=file:"}, []string{"empty path"}, nil},
		{"empty cred-dir", []string{"--cred-dir="}, []string{"empty directory path"}, nil},
		{"both forms", []string{"--from-credentials-directory", "--from-credentials-directory=a"}, []string{"both bare"}, nil},
		{"empty list", []string{"--from-credentials-directory="}, []string{"empty list"}, nil},
		{"empty name in list", []string{"--from-credentials-directory=a,,b"}, []string{"empty"}, nil},
		{"bad name in list", []string{"--from-credentials-directory=a/b"}, []string{"contains '/'"}, nil},
		{"repeated in list", []string{"--from-credentials-directory=a,a"}, []string{`"a" listed twice`}, nil},
		{"duplicate across flags", []string{"--cred", "a=file:/x", "--static", "a=1"}, []string{`duplicate credential "a"`, "--cred", "--static"}, nil},
		{"static without equals", []string{"--static", "hunter2"}, []string{"7 bytes is not NAME=VALUE"}, []string{"hunter2"}},
		{"static bad name", []string{"--static", "a/b=1"}, []string{"--static", "contains '/'"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.args...)
			if err == nil {
				t.Fatal("Specs succeeded, want an error")
			}
			if !errors.Is(err, ErrUsage) {
				t.Errorf("error %q does not wrap ErrUsage", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(err.Error(), n) {
					t.Errorf("error %q echoes %q", err, n)
				}
			}
		})
	}
}

func TestHelpShowsNoDefaults(t *testing.T) {
	var f Flags
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	f.Register(fs)
	if err := fs.Parse([]string{"--cred", "a=file:/secret-path", "--static", "b=c"}); err != nil {
		t.Fatal(err)
	}
	usage := cli.Help("test", fs)
	for _, want := range []string{"--cred NAME=file:PATH", "--cred-dir DIR", "--from-credentials-directory[=NAMES]", "--static NAME=VALUE"} {
		if !strings.Contains(usage, want) {
			t.Errorf("usage does not contain %q:\n%s", want, usage)
		}
	}
	if strings.Contains(usage, "secret-path") {
		t.Errorf("usage shows a parsed value:\n%s", usage)
	}
}
