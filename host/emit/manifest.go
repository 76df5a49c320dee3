package emit

import (
	"crypto/ed25519"
	"fmt"
	"sort"
	"time"

	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// ManifestParams are the manifest's fields besides its entries.
type ManifestParams struct {
	VM       string
	IssuedAt time.Time
	// NotAfter is optional.
	NotAfter time.Time
	// Key signs the manifest; nil leaves it unsigned (digests only).
	Key ed25519.PrivateKey
}

// ManifestCredential is one credential the manifest lists.
type ManifestCredential struct {
	Name   string
	Value  credential.Secret
	Secret bool
}

// BuildManifest returns the firmware manifest envelope (the value of the
// plan.ManifestName string): one entry per credential with its size,
// SHA-256 and delivery, signed with params.Key if set. It has no session
// challenge: the session (package push) signs its own. It holds digests
// of the values: keep it where the values are.
//
// deliveries gives each credential's delivery from the plan. With nil,
// every entry says smbios: the encoding has the same length whatever the
// deliveries (one attribute byte each), so that result's length is what
// the planner must reserve before it knows the deliveries.
func BuildManifest(params ManifestParams, creds []ManifestCredential, deliveries map[string]plan.Delivery) (credential.Secret, error) {
	b := manifest.NewBuilder(params.VM, params.IssuedAt)
	defer b.Wipe()
	b.SetNotAfter(params.NotAfter)
	sorted := append([]ManifestCredential(nil), creds...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, c := range sorted {
		d := manifest.DeliverySMBIOS
		if deliveries != nil {
			pd, ok := deliveries[c.Name]
			if !ok {
				return credential.Secret{}, fmt.Errorf("manifest: credential %q is not in the plan", c.Name)
			}
			var err error
			if d, err = manifestDelivery(pd); err != nil {
				return credential.Secret{}, fmt.Errorf("manifest: credential %q: %w", c.Name, err)
			}
		}
		if err := b.Add(c.Name, c.Value, d, !c.Secret); err != nil {
			return credential.Secret{}, fmt.Errorf("manifest: %w", err)
		}
	}
	env, err := b.Envelope(params.Key)
	if err != nil {
		return credential.Secret{}, err
	}
	return credential.NewSecret(env), nil
}

func manifestDelivery(d plan.Delivery) (manifest.Delivery, error) {
	switch d {
	case plan.DeliverySMBIOS:
		return manifest.DeliverySMBIOS, nil
	case plan.DeliveryFwCfg:
		return manifest.DeliveryFwCfg, nil
	case plan.DeliveryChannel:
		return manifest.DeliveryChannel, nil
	}
	return 0, fmt.Errorf("unknown delivery %q", d)
}

// Deliveries returns each planned item's delivery by name.
func Deliveries(p *plan.Plan) map[string]plan.Delivery {
	m := make(map[string]plan.Delivery, len(p.Items))
	for _, it := range p.Items {
		m[it.Name] = it.Delivery
	}
	return m
}
