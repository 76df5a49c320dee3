package channel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmcred/vmcred/host/atomicfile"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// StateFile is the serve-state file's name in the runtime directory.
const StateFile = "vmcred-serve.json"

// StateVersion is the serve-state format this package writes and reads.
const StateVersion = 1

// maxStateFile bounds what ReadState reads: 4096 credentials with long
// paths fit easily.
const maxStateFile = 4 << 20

// ErrState is wrapped by every error about a serve-state file's content.
var ErrState = errors.New("invalid serve state")

// ErrChanged is wrapped when a source no longer holds what pack put in the
// manifest: serving it would only make the guest's verification fail.
var ErrChanged = errors.New("changed since pack")

// State is what pack records for the server: which boot (nonce) and token
// the manifest carries, and where to read each channel credential. It holds
// no credential value and not the token, only the token's SHA-256: the
// state file is 0600, but a copy of it must not let anyone fetch.
type State struct {
	// VM is the VM's name, as in the manifest.
	VM string
	// Nonce is the manifest's boot nonce.
	Nonce [manifest.NonceSize]byte
	// TokenHash is the SHA-256 of the manifest's channel token.
	TokenHash [sha256.Size]byte
	// Tokenless is true when the manifest carries no token (it travels
	// on cloud-hypervisor's command line, where every local user can read
	// it). The server then accepts any token, so it must listen where only
	// the VM can connect: a private hybrid-vsock Unix socket, or AF_VSOCK
	// with an expected CID.
	Tokenless bool
	// Channel is the address the guest dials, as in the manifest.
	Channel string
	// IssuedAt is when pack built the manifest.
	IssuedAt time.Time
	// Credentials are the ones whose delivery is channel, sorted by name.
	Credentials []StateCredential
	// Bootstrap is true when the manifest itself goes by channel (pack
	// --manifest-by-channel; Firecracker): the guest has no firmware
	// manifest, so it cannot know the token or the boot nonce. The state is
	// then Tokenless, the server accepts a HELLO with an all-zero token and
	// a zero nonce, and sends the signed manifest (ManifestFile) first.
	//
	// Security: with no token, any guest process that reaches the port
	// first gets the secrets; the once-per-boot rule then makes the real
	// agent fail loudly ("already fetched") and report that failure, so
	// wait does not see the agent's ready: detection, not prevention.
	// Firmware delivery stays the stronger mode.
	Bootstrap bool
	// ManifestFile is the absolute path of the signed manifest envelope
	// pack wrote (mode 0400), in bootstrap mode.
	ManifestFile string
}

// StateCredential is one credential to serve: its name, what the manifest
// says about it, and where to read it. Sources are re-read for every
// fetch, so a long-running server holds no values in memory between boots.
type StateCredential struct {
	Name   string
	Size   int64
	SHA256 [sha256.Size]byte
	// File is the absolute path of the source file (symlinks as pack found
	// them; the path pack read through).
	File string
	// Static is the value of a --static credential, which is not secret
	// (it was on pack's command line), when File is "".
	Static *string
}

// NewState builds the state for a manifest whose channel token is token
// (empty for a tokenless manifest).
func NewState(vm string, nonce [manifest.NonceSize]byte, token credential.Secret, channel string, issuedAt time.Time, creds []StateCredential) (*State, error) {
	st := &State{VM: vm, Nonce: nonce, Channel: channel, IssuedAt: issuedAt.UTC().Truncate(time.Second), Credentials: creds}
	switch token.Len() {
	case 0:
		st.Tokenless = true
	case proto.TokenSize:
		st.TokenHash = token.SHA256()
	default:
		return nil, fmt.Errorf("%w: token is %d bytes, want %d", ErrState, token.Len(), proto.TokenSize)
	}
	if err := st.validate(); err != nil {
		return nil, err
	}
	return st, nil
}

type stateWire struct {
	Version     int              `json:"version"`
	VM          string           `json:"vm"`
	Nonce       string           `json:"nonce"`
	TokenSHA256 string           `json:"token_sha256,omitempty"`
	Channel     string           `json:"channel"`
	IssuedAt    time.Time        `json:"issued_at"`
	Credentials []credentialWire `json:"credentials"`
	Comment     string           `json:"comment,omitempty"`
	// Bootstrap and ManifestFile: see State.
	Bootstrap    bool   `json:"bootstrap,omitempty"`
	ManifestFile string `json:"manifest_file,omitempty"`
}

type credentialWire struct {
	Name   string  `json:"name"`
	Size   int64   `json:"size"`
	SHA256 string  `json:"sha256"`
	File   string  `json:"file,omitempty"`
	Static *string `json:"static,omitempty"`
}

// MarshalJSON writes the state file's format: hex for the nonce and the
// digests.
func (st *State) MarshalJSON() ([]byte, error) {
	w := stateWire{Version: StateVersion, VM: st.VM, Nonce: hex.EncodeToString(st.Nonce[:]), Channel: st.Channel, IssuedAt: st.IssuedAt,
		Credentials: make([]credentialWire, len(st.Credentials)),
		Comment:     "written by vmcred-host pack for vmcred-host serve; no values, only where to read them"}
	w.Bootstrap, w.ManifestFile = st.Bootstrap, st.ManifestFile
	if !st.Tokenless {
		w.TokenSHA256 = hex.EncodeToString(st.TokenHash[:])
	}
	for i, c := range st.Credentials {
		w.Credentials[i] = credentialWire{Name: c.Name, Size: c.Size, SHA256: hex.EncodeToString(c.SHA256[:]), File: c.File, Static: c.Static}
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads the state file's format and validates it.
func (st *State) UnmarshalJSON(b []byte) error {
	var w stateWire
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&w); err != nil {
		return fmt.Errorf("%w: %w", ErrState, err)
	}
	if w.Version != StateVersion {
		return fmt.Errorf("%w: version %d, want %d (pack and serve are different vmcred versions?)", ErrState, w.Version, StateVersion)
	}
	s := State{VM: w.VM, Channel: w.Channel, IssuedAt: w.IssuedAt, Bootstrap: w.Bootstrap, ManifestFile: w.ManifestFile}
	if err := decodeHex(s.Nonce[:], w.Nonce, "nonce"); err != nil {
		return err
	}
	if w.TokenSHA256 == "" {
		s.Tokenless = true
	} else if err := decodeHex(s.TokenHash[:], w.TokenSHA256, "token_sha256"); err != nil {
		return err
	}
	for i, c := range w.Credentials {
		sc := StateCredential{Name: c.Name, Size: c.Size, File: c.File, Static: c.Static}
		if err := decodeHex(sc.SHA256[:], c.SHA256, fmt.Sprintf("credential %d sha256", i)); err != nil {
			return err
		}
		s.Credentials = append(s.Credentials, sc)
	}
	if err := s.validate(); err != nil {
		return err
	}
	*st = s
	return nil
}

func decodeHex(dst []byte, s, field string) error {
	if len(s) != 2*len(dst) {
		return fmt.Errorf("%w: %s is %d hex digits, want %d", ErrState, field, len(s), 2*len(dst))
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return fmt.Errorf("%w: %s is not hex", ErrState, field)
	}
	return nil
}

func (st *State) validate() error {
	if err := credential.ValidateName(st.VM); err != nil {
		return fmt.Errorf("%w: vm: %w", ErrState, err)
	}
	if st.Channel == "" {
		return fmt.Errorf("%w: no channel address", ErrState)
	}
	switch {
	case st.Bootstrap && !st.Tokenless:
		return fmt.Errorf("%w: bootstrap mode with a channel token (the guest could not know it)", ErrState)
	case st.Bootstrap && !filepath.IsAbs(st.ManifestFile):
		return fmt.Errorf("%w: bootstrap mode needs the manifest file as an absolute path, have %q", ErrState, st.ManifestFile)
	case !st.Bootstrap && st.ManifestFile != "":
		return fmt.Errorf("%w: a manifest file outside bootstrap mode", ErrState)
	}
	if len(st.Credentials) > proto.MaxCredentials {
		return fmt.Errorf("%w: %d credentials, over the limit of %d", ErrState, len(st.Credentials), proto.MaxCredentials)
	}
	seen := make(map[string]bool, len(st.Credentials))
	var total int64
	for _, c := range st.Credentials {
		if err := credential.ValidateName(c.Name); err != nil {
			return fmt.Errorf("%w: %w", ErrState, err)
		}
		if seen[c.Name] {
			return fmt.Errorf("%w: credential %q listed twice", ErrState, c.Name)
		}
		seen[c.Name] = true
		switch {
		case c.Size < 0 || c.Size > manifest.MaxEntrySize:
			return fmt.Errorf("%w: credential %q: size %d outside 0 to %d", ErrState, c.Name, c.Size, manifest.MaxEntrySize)
		case (c.File == "") == (c.Static == nil):
			return fmt.Errorf("%w: credential %q: want exactly one of file and static", ErrState, c.Name)
		case c.File != "" && !filepath.IsAbs(c.File):
			return fmt.Errorf("%w: credential %q: source %s is not an absolute path", ErrState, c.Name, c.File)
		}
		total += c.Size
	}
	if total > proto.MaxCredentialsSize {
		return fmt.Errorf("%w: channel credentials total %d bytes, over the %d-byte frame limit", ErrState, total, proto.MaxCredentialsSize)
	}
	return nil
}

// Names lists the credentials' names.
func (st *State) Names() []string {
	n := make([]string, len(st.Credentials))
	for i, c := range st.Credentials {
		n[i] = c.Name
	}
	return n
}

// CheckToken reports, in constant time, whether token is the manifest's.
// A tokenless state accepts any token.
func (st *State) CheckToken(token credential.Secret) bool {
	if st.Tokenless {
		return true
	}
	sum := token.SHA256()
	return subtle.ConstantTimeCompare(sum[:], st.TokenHash[:]) == 1
}

// WriteState writes st to dir/StateFile atomically, mode 0600. dir must
// exist.
func WriteState(dir string, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode serve state: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, StateFile), append(b, '\n'), 0o600)
}

// ReadState reads dir/StateFile.
func ReadState(dir string) (*State, error) {
	path := filepath.Join(dir, StateFile)
	b, err := readCapped(path, maxStateFile)
	if err != nil {
		return nil, fmt.Errorf("read serve state: %w", err)
	}
	st := new(State)
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("read serve state %s: %w", path, err)
	}
	return st, nil
}

// Load reads every channel credential fresh from its source and checks it
// against the manifest's size and SHA-256. An error names the credential
// and its source file, never a value; values read before it are wiped.
// The server does not use it: it streams large sources while it hashes
// them (openSources, streamSource), holding back each one's end until its
// digest matches.
func (st *State) Load(ctx context.Context) ([]proto.Credential, error) {
	out := make([]proto.Credential, 0, len(st.Credentials))
	fail := func(err error) ([]proto.Credential, error) {
		for _, c := range out {
			c.Value.Wipe()
		}
		return nil, err
	}
	for _, c := range st.Credentials {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		var v credential.Secret
		var sum [sha256.Size]byte
		if c.Static != nil {
			v = credential.NewSecret([]byte(*c.Static))
			sum = v.SHA256()
		} else {
			b, s, err := readExact(c.File, c.Size)
			if err != nil {
				return fail(fmt.Errorf("credential %q from %s: %w", c.Name, c.File, err))
			}
			v, sum = credential.NewSecret(b), s
		}
		e := manifest.Entry{Name: c.Name, Size: uint64(c.Size), SHA256: c.SHA256}
		if err := e.MatchesDigest(uint64(v.Len()), sum); err != nil {
			v.Wipe()
			src := "--static"
			if c.File != "" {
				src = c.File
			}
			return fail(fmt.Errorf("credential %q from %s: %w: %w", c.Name, src, ErrChanged, err))
		}
		out = append(out, proto.Credential{Name: c.Name, Value: v})
	}
	return out, nil
}

// readExact reads a regular file that should be size bytes, and returns
// its bytes and their SHA-256. It opens with O_NONBLOCK and O_NOCTTY (a
// FIFO or terminal swapped in cannot block it) and checks fstat, so what
// is read is what was checked; it reads at most size+1 bytes, so a file
// that grew is seen without reading it all.
//
// A large file is hashed while it is read: another goroutine hashes each
// chunk as soon as it is in memory, so the read (a copy out of the page
// cache, and page faults on the new buffer) overlaps the hash instead of
// adding to it (BENCHMARKS.md: the channel's time to first byte).
func readExact(path string, size int64) ([]byte, [sha256.Size]byte, error) {
	f, err := openSource(path, size)
	if err != nil {
		return nil, [sha256.Size]byte{}, err
	}
	defer f.Close()
	return readOpen(f, size)
}

// openSource opens a source as readExact does and checks that it is a
// regular file of size bytes.
func openSource(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, unwrapPath(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, unwrapPath(err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("not a regular file (%v)", fi.Mode().Type())
	}
	if fi.Size() != size {
		f.Close()
		return nil, fmt.Errorf("%w: %d bytes, manifest says %d", ErrChanged, fi.Size(), size)
	}
	return f, nil
}

// readOpen is readExact on a source openSource opened.
func readOpen(f *os.File, size int64) ([]byte, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	b := make([]byte, size+1)
	n, sum, err := readHashing(f, b)
	switch {
	case err == nil:
		clear(b)
		return nil, sum, fmt.Errorf("%w: more than %d bytes", ErrChanged, size)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
	default:
		clear(b)
		return nil, sum, unwrapPath(err)
	}
	if int64(n) != size {
		clear(b)
		return nil, sum, fmt.Errorf("%w: %d bytes, manifest says %d", ErrChanged, n, size)
	}
	return b[:n:n], sum, nil
}

// hashChunk is the unit readHashing reads and hands to the hasher; files
// of less than two chunks are read first and hashed after.
const hashChunk = 1 << 20

// readHashing fills b from r as io.ReadFull does and returns how many
// bytes it read, their SHA-256, and io.ReadFull's error.
func readHashing(r io.Reader, b []byte) (int, [sha256.Size]byte, error) {
	if len(b) < 2*hashChunk {
		n, err := io.ReadFull(r, b)
		return n, sha256.Sum256(b[:n]), err
	}
	// read sends the end of each chunk read; the hasher owns b[:end] from
	// then on, and the reader only writes beyond it.
	ends := make(chan int, len(b)/hashChunk+1)
	var sum [sha256.Size]byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		h := sha256.New()
		off := 0
		for end := range ends {
			h.Write(b[off:end])
			off = end
		}
		h.Sum(sum[:0])
	}()
	n := 0
	var err error
	for n < len(b) {
		var m int
		m, err = io.ReadFull(r, b[n:min(n+hashChunk, len(b))])
		n += m
		if m > 0 {
			ends <- n
		}
		if err != nil {
			if err == io.EOF && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			break
		}
	}
	close(ends)
	<-done
	return n, sum, err
}

// unwrapPath drops the *fs.PathError wrapper: the caller names the path.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readCapped reads a regular file of at most limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is over the %d-byte limit", path, limit)
	}
	return b, nil
}
