package manifest_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

func Example() {
	// Host: a key from `vmcred-host keygen` (here a fixed test seed).
	seed := sha256.Sum256([]byte("example key"))
	key := ed25519.NewKeyFromSeed(seed[:])
	pub := key.Public().(ed25519.PublicKey)

	// Host: build, encode and sign the manifest. The challenge is the one
	// the agent opened its session with (crypto/rand on its side).
	challenge := [manifest.ChallengeSize]byte{1}
	issued := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b := manifest.NewBuilder("web-1", issued)
	b.SetNotAfter(issued.Add(time.Hour))
	b.SetSession(challenge, 1)
	apiKey := credential.NewSecret([]byte("s3cr3t"))
	if err := b.Add("api-key", apiKey, manifest.DeliverySMBIOS, false); err != nil {
		panic(err)
	}
	m, err := b.Manifest()
	if err != nil {
		panic(err)
	}
	body, err := m.MarshalBinary()
	if err != nil {
		panic(err)
	}
	envelope, err := manifest.Sign(body, key)
	if err != nil {
		panic(err)
	}

	// Guest: open with the trusted public key, check, and verify what arrived.
	got, v, err := manifest.Open(envelope, []ed25519.PublicKey{pub})
	if err != nil {
		panic(err)
	}
	fmt.Println(v)
	fmt.Println(got.Check(issued.Add(time.Minute), "web-1"))
	e, _ := got.Lookup("api-key")
	fmt.Println(e.Name, e.Size, e.Delivery, e.Matches(apiKey))
	fmt.Println(e.Matches(credential.NewSecret([]byte("s3cr3"))))
	fmt.Println(len(envelope), "bytes")
	// Output:
	// signed by trusted ed25519 key 1a8f706786d41630
	// <nil>
	// api-key 6 smbios <nil>
	// credential "api-key": size is 5 bytes, manifest says 6
	// 182 bytes
}
