package main

import (
	"bytes"
	"testing"

	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/credential"
)

// TestSessionCredentialsCopiesOnlyForASession checks that pack copies the
// values for a session only when run has one: without, every delivery is
// listed and no value is copied (a copy passes through vector registers a
// signal can save where no Wipe reaches; issue 17, finding 6).
func TestSessionCredentialsCopiesOnlyForASession(t *testing.T) {
	v := []byte("the value")
	p := &plan.Plan{Items: []plan.Item{{Name: "k", Size: len(v), Secret: true, Delivery: plan.DeliveryChannel}}}
	creds := []source.Credential{{Name: "k", Value: credential.NewSecret(v), Secret: true}}
	got := sessionCredentials(p, creds, credential.Secret{}, false)
	if len(got) != 1 || got[0].Name != "k" || got[0].Value.Len() != 0 {
		t.Fatalf("without a session: %d credentials, value of %d bytes; want k with no value", len(got), got[0].Value.Len())
	}
	got = sessionCredentials(p, creds, credential.Secret{}, true)
	if len(got) != 1 || !bytes.Equal(got[0].Value.Reveal(), v) || &got[0].Value.Reveal()[0] == &v[0] {
		t.Fatal("with a session: want a copy of the value")
	}
}
