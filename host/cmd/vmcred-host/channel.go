package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	hostchannel "github.com/vmcred/vmcred/host/channel"
	"github.com/vmcred/vmcred/host/emit"
	"github.com/vmcred/vmcred/host/plan"
	"github.com/vmcred/vmcred/host/source"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

// NotifySocketName is the credential guest PID 1 (systemd ≥ 254) reads to
// set its own $NOTIFY_SOCKET (systemd.system-credentials(7)).
const NotifySocketName = "vmm.notify_socket"

// maxSourceSize is the per-file limit pack reads sources with: systemd's
// 1 MiB, or, with a channel, the manifest's 64 MiB (the planner then
// refuses what no delivery can carry, naming the limit).
func (f *packFlags) maxSourceSize() int {
	if f.channel != "" {
		return manifest.MaxEntrySize
	}
	return credential.MaxSize
}

// channelExtras is what pack adds for a channel: the one-time token in
// the manifest, and for a vsock channel the vmm.notify_socket credential.
type channelExtras struct {
	// notify is the vmm.notify_socket value, or empty.
	notify credential.Secret
}

// addChannel sets params.Token to a fresh random token, unless the
// manifest would travel on cloud-hypervisor's command line (no --ch-api),
// where every local user can read it: that manifest stays tokenless (the
// format allows it for exactly this case), and the channel is protected
// by who can reach the hybrid-vsock socket. For a vsock channel address
// it also returns vmm.notify_socket=vsock-stream:CID:PORT (forced stream:
// the server speaks nothing else, and systemd's plain vsock: would try a
// datagram socket first), unless the user passes that credential
// themselves or the target has no firmware to carry it (Firecracker).
func (d deps) addChannel(env *cli.Env, f *packFlags, hv plan.Hypervisor, params *emit.ManifestParams, creds []source.Credential) (channelExtras, error) {
	var x channelExtras
	if f.channel == "" {
		return x, nil
	}
	a, err := address.Parse(f.channel)
	if err != nil {
		return x, cli.Usagef("--channel: %v", err)
	}
	if err := a.CheckDial(); err != nil {
		return x, cli.Usagef("--channel is what the guest dials: %v", err)
	}
	if f.bootstrapMode() {
		env.Log.Warn(fmt.Sprintf("vm %s: bootstrap mode (manifest by channel): the manifest is signed but carries no channel token, so any process in the guest that reaches %s before the agent could fetch the secrets; the agent would then fail (already fetched) and wait would not see ready. Firmware delivery is stronger where the hypervisor allows it", f.vm, f.channel))
		// No firmware carries vmm.notify_socket either.
		return x, nil
	}
	if hv == plan.CloudHypervisor && f.chAPI == "" {
		env.Log.Warn("cloud-hypervisor without --ch-api: the manifest goes on its command line, so it carries no channel token; " +
			"the channel is protected only by who can connect to the hybrid-vsock socket (serve refuses a tokenless manifest on AF_VSOCK without --expect-cid)")
	} else {
		tok := make([]byte, proto.TokenSize)
		if _, err := io.ReadFull(d.rand, tok); err != nil {
			return x, fmt.Errorf("channel token: %w", err)
		}
		params.Token = credential.NewSecret(tok)
	}
	if !a.IsVsock() || hv == plan.Firecracker {
		return x, nil
	}
	for _, c := range creds {
		if c.Name == NotifySocketName {
			return x, nil
		}
	}
	ns := address.Address{Kind: address.VsockStream, CID: a.CID, Port: a.Port}
	x.notify = credential.NewSecret([]byte(ns.String()))
	return x, nil
}

// serveState records, for `vmcred-host serve`, the boot and token of the
// manifest and where each channel credential is read: source paths and
// --static values (which are not secret), never a secret value.
func serveState(f *packFlags, p *plan.Plan, params emit.ManifestParams, creds []source.Credential) (*hostchannel.State, error) {
	byName := make(map[string]source.Credential, len(creds))
	for _, c := range creds {
		byName[c.Name] = c
	}
	var sc []hostchannel.StateCredential
	for _, it := range p.Items {
		// An extra string by channel (Firecracker's manifest, which has
		// no firmware to travel in) is not the server's to send.
		if it.Delivery != plan.DeliveryChannel || it.Extra {
			continue
		}
		c, ok := byName[it.Name]
		if !ok {
			return nil, fmt.Errorf("credential %q goes by channel but is not a source (a string vmcred adds cannot)", it.Name)
		}
		s := hostchannel.StateCredential{Name: c.Name, Size: int64(c.Value.Len()), SHA256: c.Value.SHA256()}
		switch {
		case c.Origin.Kind == source.Static:
			v := string(c.Value.Reveal())
			s.Static = &v
		case c.Origin.Path != "":
			abs, err := filepath.Abs(c.Origin.Path)
			if err != nil {
				return nil, fmt.Errorf("credential %q: %w", c.Name, err)
			}
			s.File = abs
		default:
			return nil, fmt.Errorf("credential %q has no source file to serve it from", c.Name)
		}
		sc = append(sc, s)
	}
	return hostchannel.NewState(f.vm, params.Nonce, params.Token, f.channel, params.IssuedAt, sc)
}

// writeServeState writes pk's serve state to the runtime directory: the
// one the payload files went to, else --runtime-dir or
// $RUNTIME_DIRECTORY (created 0700). Without any, it warns: nothing could
// serve this manifest's channel.
func (pk *packed) writeServeState(env *cli.Env, f *packFlags) error {
	if pk.serve == nil {
		return nil
	}
	dir := pk.result.RuntimeDir
	if dir == "" {
		dir = f.runtimeDir
		if dir == "" && env.Getenv != nil {
			dir, _, _ = strings.Cut(env.Getenv("RUNTIME_DIRECTORY"), ":")
		}
	}
	if dir == "" {
		env.Log.Warn(fmt.Sprintf("vm %s: no --runtime-dir, so the serve state (token hash, channel sources) was not written and vmcred-host serve cannot serve this manifest's channel", f.vm))
		return nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return cli.WithCode(cli.ExitIO, fmt.Errorf("serve state: %w", err))
	}
	if err := hostchannel.WriteState(dir, pk.serve); err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	env.Log.Info(fmt.Sprintf("vm %s: serve state for the channel %s in %s (%d credential(s) by channel); run vmcred-host serve --vm %s --runtime-dir %s --listen ADDR",
		f.vm, f.channel, filepath.Join(dir, hostchannel.StateFile), len(pk.serve.Credentials), f.vm, dir))
	return nil
}
