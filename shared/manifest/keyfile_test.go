package manifest

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestKeyFileRoundTrip(t *testing.T) {
	key := testKey(1)
	priv, err := MarshalPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := MarshalPublicKey(testPub(1))
	if err != nil {
		t.Fatal(err)
	}
	wantPriv := "vmcred-ed25519-private " + base64.StdEncoding.EncodeToString(key.Seed()) + "\n"
	wantPub := "vmcred-ed25519-public " + base64.StdEncoding.EncodeToString(testPub(1)) + "\n"
	if string(priv) != wantPriv {
		t.Errorf("private key file is not the documented format") // never print it
	}
	if diff := cmp.Diff(wantPub, string(pub)); diff != "" {
		t.Errorf("public key file (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		name      string
		priv, pub []byte
	}{
		{"with newline", priv, pub},
		{"without newline", bytes.TrimSuffix(priv, []byte("\n")), bytes.TrimSuffix(pub, []byte("\n"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParsePrivateKey(tc.priv)
			if err != nil {
				t.Fatal(err)
			}
			if !k.Equal(key) {
				t.Errorf("ParsePrivateKey returned another key")
			}
			p, err := ParsePublicKey(tc.pub)
			if err != nil {
				t.Fatal(err)
			}
			if !p.Equal(testPub(1)) {
				t.Errorf("ParsePublicKey returned another key")
			}
		})
	}
	if _, err := MarshalPrivateKey(key[:32]); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("MarshalPrivateKey(32 bytes) error = %v", err)
	}
	if _, err := MarshalPublicKey(make([]byte, 31)); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("MarshalPublicKey(31 bytes) error = %v", err)
	}
}

func TestKeyFileErrors(t *testing.T) {
	seed := base64.StdEncoding.EncodeToString(testKey(1).Seed())
	pub := base64.StdEncoding.EncodeToString(testPub(1))
	// The last base64 character of a 32-byte value carries 4 padding bits;
	// changing them gives a non-canonical encoding of the same bytes.
	nonCanon := seed[:42] + string(seed[42]+1) + "="
	for _, tc := range []struct {
		name    string
		private bool
		file    string
		text    string
	}{
		{"empty", true, "", "not a vmcred key file"},
		{"wrong header", true, "vmcred-ed25519-secret " + seed + "\n", "not a vmcred key file"},
		{"header only", true, "vmcred-ed25519-private", "not a vmcred key file"},
		{"no header, bare base64", true, seed + "\n", "not a vmcred key file"},
		{"public file as private", true, "vmcred-ed25519-public " + pub + "\n", `this is a "vmcred-ed25519-public" file`},
		{"private file as public", false, "vmcred-ed25519-private " + seed + "\n", `this is a "vmcred-ed25519-private" file`},
		{"openssh public key", false, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host\n", "OpenSSH and PEM"},
		{"pem private key", true, "-----BEGIN PRIVATE KEY-----\n" + seed + "\n-----END PRIVATE KEY-----\n", "OpenSSH and PEM"},
		{"two spaces", true, "vmcred-ed25519-private  " + seed + "\n", "whitespace"},
		{"crlf", true, "vmcred-ed25519-private " + seed + "\r\n", "whitespace"},
		{"two newlines", true, "vmcred-ed25519-private " + seed + "\n\n", "whitespace"},
		{"second line", false, "vmcred-ed25519-public " + pub + "\nmore\n", "whitespace"},
		{"comment", false, "vmcred-ed25519-public " + pub + " host-a\n", "whitespace"},
		{"bad base64 character", true, "vmcred-ed25519-private " + seed[:10] + "!" + seed[11:] + "\n", "bad base64 at character 10"},
		{"url-safe base64", true, "vmcred-ed25519-private " + strings.NewReplacer("+", "-", "/", "_").Replace(seed) + strings.Repeat("", 0) + "\n", ""},
		{"non-canonical padding bits", true, "vmcred-ed25519-private " + nonCanon + "\n", "bad base64"},
		{"short", true, "vmcred-ed25519-private " + seed[:40] + "\n", "40 base64 characters, want 44"},
		{"long", false, "vmcred-ed25519-public " + pub + "AAAA\n", "48 base64 characters, want 44"},
		{"64-byte private key", true, "vmcred-ed25519-private " + base64.StdEncoding.EncodeToString(testKey(1)) + "\n", "88 base64 characters, want 44"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.private {
				_, err = ParsePrivateKey([]byte(tc.file))
			} else {
				_, err = ParsePublicKey([]byte(tc.file))
			}
			if tc.name == "url-safe base64" {
				if !strings.ContainsAny(seed, "+/") {
					t.Skip("this seed's base64 has no '+' or '/'")
				}
				tc.text = "bad base64"
			}
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("error = %v, want ErrInvalidKey", err)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not contain %q", err, tc.text)
			}
			for _, material := range []string{seed, pub, seed[:8], pub[:8], seed[len(seed)-9 : len(seed)-1], "AAAAC3Nza"} {
				if strings.Contains(err.Error(), material) {
					t.Errorf("error contains key material") // without printing it
				}
			}
		})
	}
}

func TestKeyFileSigns(t *testing.T) {
	// A key read back from its file signs manifests its public file opens.
	priv, _ := MarshalPrivateKey(testKey(3))
	pubFile, _ := MarshalPublicKey(testPub(3))
	k, err := ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePublicKey(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	env := mustSign(t, mustMarshal(t, minimal()), k)
	if _, v, err := Open(env, []ed25519.PublicKey{p}); err != nil || !v.Trusted {
		t.Errorf("Open = %v, %v", v, err)
	}
}
