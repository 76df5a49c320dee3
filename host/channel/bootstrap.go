package channel

import (
	"fmt"

	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
)

// ManifestName is the credential that carries the signed manifest in
// bootstrap mode, as in firmware.
const ManifestName = "vmcred.manifest"

// maxManifestFile bounds the manifest file serve reads in bootstrap mode:
// 4096 entries of about 100 bytes, with room to spare.
const maxManifestFile = 4 << 20

// loadManifest reads the signed manifest envelope pack wrote for bootstrap
// mode. It is sent as is: the guest verifies its signature.
func (st *State) loadManifest() (proto.Credential, error) {
	b, err := readCapped(st.ManifestFile, maxManifestFile)
	if err != nil {
		return proto.Credential{}, fmt.Errorf("credential %q: %w", ManifestName, err)
	}
	if len(b) == 0 {
		return proto.Credential{}, fmt.Errorf("credential %q: %s is empty", ManifestName, st.ManifestFile)
	}
	return proto.Credential{Name: ManifestName, Value: credential.NewSecret(b)}, nil
}

// bootstrapHello says whether a HELLO may fetch in bootstrap mode: the
// guest has no firmware manifest, so it sends an all-zero token (the
// protocol's token is fixed-size; all zeros is the bootstrap marker) and a
// zero boot nonce. The manifest's own nonce is accepted too.
func (st *State) bootstrapHello(h proto.Hello) bool {
	if !st.Bootstrap {
		return false
	}
	var zero [proto.NonceSize]byte
	return h.BootNonce == zero || h.BootNonce == st.Nonce
}
