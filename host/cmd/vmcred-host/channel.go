package main

import (
	"fmt"

	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/host/push"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/address"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// NotifySocketName is the credential guest PID 1 (systemd ≥ 254) reads to
// set its own $NOTIFY_SOCKET (systemd.system-credentials(7)).
const NotifySocketName = "vmm.notify_socket"

// notifyCredential returns the vmm.notify_socket value --notify-socket
// asks for (a vsock address is forced to vsock-stream: the receiver speaks
// nothing else, and systemd's plain vsock: would try a datagram socket
// first), or nothing: when the flag is unset, when the user passes that
// credential themselves, or for firecracker, which has no firmware to
// carry it.
func (f *packFlags) notifyCredential(hv plan.Hypervisor, creds []source.Credential) (credential.Secret, error) {
	if f.notifySocket == "" || hv == plan.Firecracker {
		return credential.Secret{}, nil
	}
	a, err := address.Parse(f.notifySocket)
	if err != nil {
		return credential.Secret{}, cli.Usagef("--notify-socket: %v", err)
	}
	if err := a.CheckDial(); err != nil {
		return credential.Secret{}, cli.Usagef("--notify-socket is what guest PID 1 dials: %v", err)
	}
	for _, c := range creds {
		if c.Name == NotifySocketName {
			return credential.Secret{}, nil
		}
	}
	if a.IsVsock() {
		a.Kind = address.VsockStream
	}
	return credential.NewSecret([]byte(a.String())), nil
}

// sessionCredentials lists every planned credential for run's session,
// with its delivery: the session's manifest lists them all, and sends the
// values of those that go by channel (the rest came by firmware). The
// values are copies, wiped by wipeSession; with withValues false they are
// left empty (pack and run without a session need only the deliveries).
func sessionCredentials(p *plan.Plan, creds []source.Credential, notifyValue credential.Secret, withValues bool) []push.Credential {
	byName := make(map[string]source.Credential, len(creds))
	for _, c := range creds {
		byName[c.Name] = c
	}
	var out []push.Credential
	for _, it := range p.Items {
		if it.Name == plan.ManifestName {
			continue
		}
		var src credential.Secret
		var static bool
		if c, ok := byName[it.Name]; ok {
			src, static = c.Value, !c.Secret
		} else if it.Name == NotifySocketName {
			src, static = notifyValue, true
		} else {
			continue
		}
		var v credential.Secret
		if withValues {
			v = credential.NewSecret(append([]byte(nil), src.Reveal()...))
		}
		out = append(out, push.Credential{Name: it.Name, Value: v, Delivery: sessionDelivery(it.Delivery), Static: static})
	}
	return out
}

func sessionDelivery(d plan.Delivery) manifest.Delivery {
	switch d {
	case plan.DeliverySMBIOS:
		return manifest.DeliverySMBIOS
	case plan.DeliveryFwCfg:
		return manifest.DeliveryFwCfg
	}
	return manifest.DeliveryChannel
}

func (pk *packed) wipeSession() {
	for _, c := range pk.session {
		c.Value.Wipe()
	}
}

func (pk *packed) sessionCount() int {
	n := 0
	for _, c := range pk.session {
		if c.Delivery == manifest.DeliveryChannel {
			n++
		}
	}
	return n
}

// describeSession says what a session sent, for the log: names, never
// values.
func describeSession(res push.Result) string {
	return fmt.Sprintf("sent %s, %d bytes, generation %d", cli.Count(len(res.Sent), "credential"), res.Bytes, res.Generation)
}
