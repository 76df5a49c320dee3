// Package source finds and reads the credentials vmcred-host hands to a VM:
// the files named by --cred NAME=file:PATH, every regular file of each
// --cred-dir DIR (a clan vars generator folder), the files systemd put in
// $CREDENTIALS_DIRECTORY for the VM's unit (--from-credentials-directory),
// and the non-secret --static NAME=VALUE strings.
//
// No secret is ever taken from argv or the environment: --cred accepts only
// the file: scheme, and the usage error for anything else never echoes what
// followed the '='. Every value is read into a credential.Secret, and no
// error or warning this package returns contains a value.
//
// The recommended host setup keeps secrets root:root 0400 and adds
// LoadCredential=NAME:PATH to the VM's unit (microvm@VM.service), so that
// systemd copies them into that unit's private $CREDENTIALS_DIRECTORY, which
// the hypervisor's user can read; --from-credentials-directory reads them
// from there. See package host/access for the doctor that explains
// "permission denied" and prints that fix.
//
// Files are opened with O_NONBLOCK and checked with fstat, so a FIFO, socket
// or device is refused without ever blocking on it or reading from it.
// Directory entries that are not regular files (or symlinks to regular
// files) are skipped with a Warning and never opened.
//
// This package is for host code (host/cmd/vmcred-host and host/...). It does
// not log: problems come back as errors, and notes as Warnings, for the
// caller to print.
package source

import (
	"errors"
	"fmt"
	"os"
	"os/user"

	"github.com/vmcred/vmcred/shared/credential"
)

// Limits on what one Collect or Check may walk, so a huge directory cannot
// make vmcred-host use unbounded memory. Per-credential size is limited by
// credential.MaxSize (systemd's CREDENTIAL_SIZE_MAX).
const (
	// MaxDirEntries is how many entries one --cred-dir or
	// $CREDENTIALS_DIRECTORY may hold, skipped ones included.
	MaxDirEntries = 4096
	// MaxCredentials is how many credentials all sources together may yield.
	MaxCredentials = 1024
)

// AllCredentials is the value a bare --from-credentials-directory stands for:
// read every regular file there. It contains ':', which no credential name
// may, so it cannot be confused with a name.
const AllCredentials = ":all"

// Errors wrapped by the errors this package returns; test with errors.Is.
var (
	// ErrUsage marks a flag-syntax problem (exit code 2 in DESIGN §7).
	// Every other error is a source that could not be read (exit code 3).
	ErrUsage = errors.New("usage error")
	// ErrDuplicate is wrapped when two sources yield the same name.
	ErrDuplicate = errors.New("duplicate credential")
	// ErrTooLarge is wrapped when a file is over credential.MaxSize.
	ErrTooLarge = errors.New("credential too large")
	// ErrNotRegular is wrapped when a named file is a directory, FIFO,
	// socket or device.
	ErrNotRegular = errors.New("not a regular file")
	// ErrNoCredentialsDirectory is wrapped when --from-credentials-directory
	// is given but $CREDENTIALS_DIRECTORY is not set.
	ErrNoCredentialsDirectory = errors.New("$CREDENTIALS_DIRECTORY is not set")
	// ErrTooMany is wrapped when MaxDirEntries or MaxCredentials is exceeded.
	ErrTooMany = errors.New("too many entries")
)

// Kind says which flag a source came from.
type Kind int

// The source kinds, one per flag.
const (
	// File is --cred NAME=file:PATH.
	File Kind = iota + 1
	// Dir is --cred-dir DIR.
	Dir
	// CredentialsDirectory is --from-credentials-directory[=NAME,...].
	CredentialsDirectory
	// Static is --static NAME=VALUE.
	Static
)

// String returns the flag, e.g. "--cred-dir".
func (k Kind) String() string {
	switch k {
	case File:
		return "--cred"
	case Dir:
		return "--cred-dir"
	case CredentialsDirectory:
		return "--from-credentials-directory"
	case Static:
		return "--static"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// MarshalText implements encoding.TextMarshaler: "cred", "cred-dir",
// "credentials-directory" or "static", for JSON reports.
func (k Kind) MarshalText() ([]byte, error) {
	switch k {
	case File:
		return []byte("cred"), nil
	case Dir:
		return []byte("cred-dir"), nil
	case CredentialsDirectory:
		return []byte("credentials-directory"), nil
	case Static:
		return []byte("static"), nil
	}
	return nil, fmt.Errorf("unknown source kind %d", int(k))
}

// UnmarshalText implements encoding.TextUnmarshaler, the inverse of
// MarshalText.
func (k *Kind) UnmarshalText(b []byte) error {
	for _, c := range []Kind{File, Dir, CredentialsDirectory, Static} {
		if t, _ := c.MarshalText(); string(t) == string(b) {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("unknown source kind %q", b)
}

// Spec is one validated source flag. Build it with Flags.Specs, or directly
// (the NixOS module and tests do); Collect validates names again.
type Spec struct {
	Kind Kind
	// Name is the credential name, for File and Static.
	Name string
	// Path is the file for File and the directory for Dir.
	Path string
	// Names are the credentials to read for CredentialsDirectory; nil or
	// empty means every regular file there.
	Names []string
	// Value is the non-secret value of a Static credential.
	Value string
}

// Origin says where a credential came from, for reports and the doctor.
type Origin struct {
	Kind Kind `json:"kind"`
	// Path is the file that is (or would be) read: PATH for --cred,
	// DIR/NAME for a directory. Empty for Static.
	Path string `json:"path,omitempty"`
	// Dir is the directory that was listed, for Dir and
	// CredentialsDirectory.
	Dir string `json:"dir,omitempty"`
	// Target is where Path leads when it is a symlink (fully resolved),
	// or "" when it is not one or could not be resolved.
	Target string `json:"target,omitempty"`
}

// String describes the origin for messages, e.g.
// "--cred-dir /run/secrets/vars/g/api-key (symlink to /run/secrets.d/1/x)".
func (o Origin) String() string {
	s := o.Kind.String()
	if o.Path != "" {
		s += " " + o.Path
	}
	if o.Target != "" {
		s += " (symlink to " + o.Target + ")"
	}
	return s
}

// Item is a credential whose source has been resolved but whose value has
// not been read: what Check returns for the permission doctor.
type Item struct {
	Name string `json:"name"`
	// Secret is false only for Static credentials.
	Secret bool   `json:"secret"`
	Origin Origin `json:"origin"`
}

// Credential is a credential with its value.
//
// Every value, static ones included, is held in a credential.Secret so that
// later stages handle one type and never print a value by accident. Secret
// says whether the value is secret: it is false only for --static, whose
// values were on the command line anyway, and later stages may put those
// inline (in argv or unencrypted OEM strings).
type Credential struct {
	Name   string            `json:"name"`
	Value  credential.Secret `json:"value"`
	Secret bool              `json:"secret"`
	Origin Origin            `json:"origin"`
}

// Item returns the credential without its value.
func (c Credential) Item() Item { return Item{Name: c.Name, Secret: c.Secret, Origin: c.Origin} }

// Warning is something skipped or worth knowing that did not stop
// collection: a subdirectory, FIFO, hidden file or invalid name in a
// directory, or a symlink that was followed.
type Warning struct {
	// Path is the directory entry concerned.
	Path string `json:"path"`
	// Name is the credential name, when the entry yielded one.
	Name string `json:"name,omitempty"`
	// Reason says what happened, e.g. "named pipe (FIFO), skipped".
	Reason string `json:"reason"`
}

// String returns "PATH: REASON".
func (w Warning) String() string { return w.Path + ": " + w.Reason }

// Env is the part of the process environment sources depend on, injected
// so tests need neither a real $CREDENTIALS_DIRECTORY nor a particular user.
// A nil field uses the operating system's.
type Env struct {
	// Getenv reads an environment variable (os.Getenv). Only
	// CREDENTIALS_DIRECTORY is read.
	Getenv func(string) string
	// User describes the user this process runs as, e.g.
	// "microvm (uid 993)", for permission-denied errors.
	User func() string
}

// OSEnv returns an Env backed by the operating system.
func OSEnv() Env { return Env{Getenv: os.Getenv, User: currentUser} }

func (e Env) getenv(k string) string {
	if e.Getenv == nil {
		return os.Getenv(k)
	}
	return e.Getenv(k)
}

func (e Env) user() string {
	if e.User == nil {
		return currentUser()
	}
	return e.User()
}

func currentUser() string {
	uid := os.Getuid()
	u, err := user.LookupId(fmt.Sprint(uid))
	if err != nil {
		return fmt.Sprintf("uid %d", uid)
	}
	return fmt.Sprintf("%s (uid %d)", u.Username, uid)
}

// ReadError is a credential that could not be read (or, for Check,
// resolved). It names the credential, the file and, for permission
// problems, the user; never the value.
type ReadError struct {
	// Name is the credential name.
	Name string
	// Path is the file.
	Path string
	// User is who tried to read it, set only when Err is a permission
	// problem.
	User string
	// Hint is advice appended to the message, if any.
	Hint string
	// Err is the cause: an fs error (fs.ErrNotExist, fs.ErrPermission),
	// ErrTooLarge or ErrNotRegular.
	Err error
}

// Error returns e.g. `read credential "api-key" from /run/secrets/x as
// microvm (uid 993): permission denied`.
func (e *ReadError) Error() string {
	s := fmt.Sprintf("read credential %q from %s", e.Name, e.Path)
	if e.User != "" {
		s += " as " + e.User
	}
	s += ": " + e.Err.Error()
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// Unwrap returns Err.
func (e *ReadError) Unwrap() error { return e.Err }

// usageError marks err as a usage problem without changing its text.
type usageError struct{ err error }

func (e *usageError) Error() string        { return e.err.Error() }
func (e *usageError) Unwrap() error        { return e.err }
func (e *usageError) Is(target error) bool { return target == ErrUsage }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}
