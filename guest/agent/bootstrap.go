package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// Where the manifest came from (Report.ManifestSource).
const (
	ManifestFromFirmware = "firmware"
	ManifestFromChannel  = "channel"
)

// bootstrap fetches the manifest by channel (bootstrap mode, vmcred-host
// pack --manifest-by-channel or firecracker): firmware carried no
// vmcred.manifest, so the agent dials cfg.Channel with an all-zero token
// and a zero nonce, takes vmcred.manifest out of the CREDENTIALS and keeps
// the rest for verify, which then checks them against the manifest as in
// firmware mode (its fetch step returns them without dialing again).
//
// The manifest must be signed by a trusted key: it comes down the same
// channel as the values, so its digests alone prove nothing. Without a
// token, any guest process that reached the host's port first could have
// fetched; the host serves once per pack, so this agent then fails here
// ("already fetched") and the host's wait never sees ready.
//
// It returns the manifest as an entry with Source "channel", or a problem.
func (ch *channel) bootstrap(rep *Report) (*oemstring.Entry, string) {
	addr := ch.cfg.Channel
	got, dialed, err := ch.dial(addr, credential.Secret{}, [manifest.NonceSize]byte{}, rep)
	switch {
	case !dialed:
		return nil, "bootstrap: " + ch.step.Error
	case err != nil:
		return nil, fmt.Sprintf("bootstrap: fetch %s by channel from %s: %v", ManifestName, addr, err)
	}
	var me *oemstring.Entry
	rest := make([]oemstring.Entry, 0, len(got))
	for _, e := range got {
		if e.Name == ManifestName && me == nil {
			me = &e
			continue
		}
		rest = append(rest, e)
	}
	if me == nil {
		ch.step.Error = "the host sent no " + ManifestName
		return nil, fmt.Sprintf("bootstrap: the host at %s sent %d credential(s) but no %s (is it serving a pack made with --manifest-by-channel?)", addr, len(rest), ManifestName)
	}
	ch.prefetched, ch.bootstrapped = rest, true
	return me, ""
}

// saveManifest keeps the manifest a load accepted as dir/ManifestFile
// (atomically, mode 0600) when it came by channel, and removes an earlier
// copy otherwise. load calls it once everything is verified, just before
// the credstore write: a load that fails verification returns before it
// and leaves any earlier copy as it was, like the credstore; a save that
// fails fails the load (exit 3) with the credstore untouched, and
// writeFileAtomic leaves no partial file.
//
// Why only a manifest fetched by channel (bootstrap mode): the host serves
// it once per pack and no firmware holds it, so without a copy `vmcred-guest
// verify`, `list` and `show` would have nothing to check the credstore
// against. A firmware manifest stays in firmware, where those commands read
// it (and which wins over a saved copy anyway), and it can carry the
// channel token, a secret that must not be copied to another file. A
// bootstrap manifest is tokenless by construction (it travels with no
// token); one that carries a token anyway is not saved. What is saved are
// the exact signed bytes: names, sizes, SHA-256 digests, the VM name and
// the channel address, never a value. The commands re-verify its signature
// against the trust keys before using it: being on disk proves nothing.
func saveManifest(dir, source string, v verified) error {
	if dir == "" {
		return nil
	}
	path := filepath.Join(dir, ManifestFile)
	if source == ManifestFromChannel && v.tokenless && v.envelope != nil {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create status folder: %w", err)
		}
		return writeFileAtomic(path, v.envelope, 0o600)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale manifest copy %s: %w", path, err)
	}
	return nil
}
