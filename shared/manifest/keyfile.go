package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
)

// Key file headers. A key file is one line: the header, one space, the key
// in padded standard base64 (44 characters), and an optional "\n". The
// private file holds the 32-byte seed (RFC 8032's private key), the public
// file the 32-byte public key. `vmcred-host keygen --out PREFIX` writes
// PREFIX.key (mode 0400) and PREFIX.pub.
const (
	// PrivateKeyHeader starts a private key file.
	PrivateKeyHeader = "vmcred-ed25519-private"
	// PublicKeyHeader starts a public key file.
	PublicKeyHeader = "vmcred-ed25519-public"
)

// MarshalPrivateKey returns the private key file for key. The result holds
// the key: wipe it when written.
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("encode private key: %w: %d bytes, want %d", ErrInvalidKey, len(key), ed25519.PrivateKeySize)
	}
	return marshalKey(PrivateKeyHeader, key.Seed()), nil
}

// MarshalPublicKey returns the public key file for pub.
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("encode public key: %w: %d bytes, want %d", ErrInvalidKey, len(pub), ed25519.PublicKeySize)
	}
	return marshalKey(PublicKeyHeader, pub), nil
}

func marshalKey(header string, key []byte) []byte {
	enc := base64.StdEncoding
	b := make([]byte, 0, len(header)+1+enc.EncodedLen(len(key))+1)
	b = append(b, header...)
	b = append(b, ' ')
	b = enc.AppendEncode(b, key)
	return append(b, '\n')
}

// ParsePrivateKey parses a private key file. Errors never contain any of
// the file's bytes.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	seed, err := parseKey(data, PrivateKeyHeader, PublicKeyHeader, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	defer clear(seed)
	return ed25519.NewKeyFromSeed(seed), nil
}

// ParsePublicKey parses a public key file. Errors never contain any of the
// file's bytes (it might be a private key file given by mistake).
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	pub, err := parseKey(data, PublicKeyHeader, PrivateKeyHeader, ed25519.PublicKeySize)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	return ed25519.PublicKey(pub), nil
}

// parseKey returns the decoded key after header; other is the header of
// the other kind of key file, named in the error if found.
func parseKey(data []byte, header, other string, size int) ([]byte, error) {
	line, ok := bytes.CutSuffix(data, []byte("\n"))
	if !ok {
		line = data
	}
	b64, ok := bytes.CutPrefix(line, []byte(header+" "))
	if !ok {
		return nil, keyFileHint(line, header, other)
	}
	enc := base64.StdEncoding.Strict()
	if want := enc.EncodedLen(size); len(b64) != want {
		if i := bytes.IndexAny(b64, " \t\r\n"); i >= 0 {
			return nil, fmt.Errorf("%w: unexpected whitespace or a second line after byte %d of the key (a key file is one line)", ErrInvalidKey, i)
		}
		return nil, fmt.Errorf("%w: the key is %d base64 characters, want %d", ErrInvalidKey, len(b64), want)
	}
	key := make([]byte, size)
	n, err := enc.Decode(key, b64)
	if err != nil {
		clear(key)
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("%w: bad base64 at character %d of the key", ErrInvalidKey, int64(ce))
		}
		return nil, fmt.Errorf("%w: bad base64", ErrInvalidKey)
	}
	if n != size {
		// Unreachable for a 44-character strict decode of 32 bytes, but a
		// short key must never pass.
		clear(key)
		return nil, fmt.Errorf("%w: %d key bytes, want %d", ErrInvalidKey, n, size)
	}
	return key, nil
}

// keyFileHint explains a missing header without quoting the input.
func keyFileHint(line []byte, header, other string) error {
	switch {
	case bytes.HasPrefix(line, []byte(other+" ")):
		return fmt.Errorf("%w: this is a %q file, not %q", ErrInvalidKey, other, header)
	case bytes.HasPrefix(line, []byte("ssh-ed25519 ")), bytes.HasPrefix(line, []byte("-----BEGIN")):
		return fmt.Errorf("%w: OpenSSH and PEM keys are not accepted; want a %q file from `vmcred-host keygen`", ErrInvalidKey, header)
	}
	return fmt.Errorf("%w: not a vmcred key file (want one line starting %q)", ErrInvalidKey, header+" ")
}
