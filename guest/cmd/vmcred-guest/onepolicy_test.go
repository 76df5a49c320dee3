package main

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
)

// policyView is what TestOnePolicy reads from verify, show and list --json.
type policyView struct {
	Result      string `json:"result"`
	Policy      string `json:"policy"`
	Credentials []struct {
		Name     string `json:"name"`
		Firmware string `json:"firmware"`
		OK       bool   `json:"ok"`
	} `json:"credentials"`
	Findings []debug.Finding `json:"findings"`
}

func (v policyView) has(code string) bool {
	return slices.ContainsFunc(v.Findings, func(f debug.Finding) bool { return f.Code == code && f.Severity == debug.SeverityError })
}

// firmwareVerdict is the agent's verdict on a credential as verify's
// FIRMWARE column says it.
var firmwareVerdict = map[string]string{
	agent.VerdictMismatch: "mismatch", agent.VerdictMissing: "missing", agent.VerdictNotInManifest: "unlisted",
	agent.PolicySignature: "ok", agent.PolicyDigest: "ok",
}

// TestOnePolicy: the same hostile inputs go through the agent's load and
// through `vmcred-guest verify`, `show` and `list`, which must give the
// same verdicts: the same outcome, the same verdict per credential, and
// the finding that names it. The debug views look at a credstore a good
// load filled before the inputs turned hostile, so what they judge is the
// inputs, not a credstore the failed load left empty.
func TestOnePolicy(t *testing.T) {
	host, other := key(1), key(2)
	hostPub := host.Public().(ed25519.PublicKey)
	expired := issuedAt.Add(8 * 24 * time.Hour)

	type inputs struct {
		strs []string
		vm   string // "" means none: no --vm and no vm-name file
		at   time.Time
	}
	cases := []struct {
		name    string
		hostile func(tr *tree, creds []cred, in *inputs)
		ok      bool
		cred    string // the credential the verdict is about
		agent   string // its verdict in the agent's report
		code    string // the finding every view gives
	}{
		{name: "good", ok: true, cred: "api-key", agent: agent.PolicySignature},
		{name: "tampered value", hostile: func(tr *tree, c []cred, in *inputs) {
			in.strs[1] = tr.oem(oemstring.PrefixVmcred, "api-key", tr.value("api-key-tampered", 32))
		}, cred: "api-key", agent: agent.VerdictMismatch, code: debug.CodeCredentialMismatch},
		{name: "truncated value", hostile: func(tr *tree, c []cred, in *inputs) {
			in.strs[1] = tr.oem(oemstring.PrefixVmcred, "api-key", c[0].value[:20])
		}, cred: "api-key", agent: agent.VerdictMismatch, code: debug.CodeCredentialMismatch},
		{name: "missing", hostile: func(tr *tree, c []cred, in *inputs) {
			in.strs = slices.Delete(in.strs, 2, 3)
		}, cred: "db-password", agent: agent.VerdictMissing, code: debug.CodeCredentialMissing},
		{name: "unlisted under vmcred's prefix", hostile: func(tr *tree, c []cred, in *inputs) {
			in.strs = append(in.strs, tr.oem(oemstring.PrefixVmcred, "planted", tr.value("planted", 16)))
		}, cred: "planted", agent: agent.VerdictNotInManifest, code: debug.CodeCredentialUnlisted},
		{name: "unlisted under systemd's prefix", hostile: func(tr *tree, c []cred, in *inputs) {
			in.strs = append(in.strs, tr.oem(oemstring.PrefixBinary, "vmm.notify_socket", []byte("vsock-stream:2:8888")))
		}, ok: true, cred: "vmm.notify_socket", agent: agent.VerdictNotInManifest},
		{name: "wrong vm", hostile: func(tr *tree, c []cred, in *inputs) { in.vm = "other" },
			cred: "api-key", agent: agent.PolicySignature, code: debug.CodeManifestWrongVM},
		{name: "no vm name", hostile: func(tr *tree, c []cred, in *inputs) { in.vm = "" },
			cred: "api-key", agent: agent.PolicySignature, code: debug.CodeManifestNoVM},
		{name: "expired", hostile: func(tr *tree, c []cred, in *inputs) { in.at = expired },
			cred: "api-key", agent: agent.PolicySignature, code: debug.CodeManifestExpired},
		{name: "unsigned with keys configured", hostile: func(tr *tree, c []cred, in *inputs) { in.strs[0] = tr.manifest(nil, c) },
			cred: "api-key", agent: agent.VerdictRefused, code: debug.CodeManifestUnsigned},
		{name: "signed by another key", hostile: func(tr *tree, c []cred, in *inputs) { in.strs[0] = tr.manifest(other, c) },
			cred: "api-key", agent: agent.VerdictRefused, code: debug.CodeManifestUnknownKey},
		{name: "a session's manifest copied into firmware", hostile: func(tr *tree, c []cred, in *inputs) {
			b := manifest.NewBuilder("demo", issuedAt)
			b.SetNotAfter(issuedAt.Add(7 * 24 * time.Hour))
			b.SetSession([32]byte{9}, 1)
			for _, x := range c {
				if err := b.Add(x.name, credential.NewSecret(x.value), manifest.DeliverySMBIOS, x.static); err != nil {
					t.Fatal(err)
				}
			}
			env, err := b.Envelope(host)
			if err != nil {
				t.Fatal(err)
			}
			in.strs[0] = tr.oem(oemstring.PrefixVmcred, agent.ManifestName, env)
		}, cred: "api-key", agent: agent.PolicySignature, code: debug.CodeManifestReplayed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t, fixedValue)
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: "db-password", value: tr.value("db-password", 24)}, {name: "ENVIRONMENT", value: tr.value("ENVIRONMENT", 12), static: true}}
			in := inputs{strs: []string{tr.manifest(host, creds)}, vm: "demo", at: loadAt}
			for _, c := range creds {
				in.strs = append(in.strs, tr.oem(oemstring.PrefixVmcred, c.name, c.value))
			}
			tr.boot(in.strs)
			tr.trust(hostPub)
			tr.load(hostPub)
			if tc.hostile != nil {
				tc.hostile(tr, creds, &in)
			}
			tr.boot(in.strs)
			if in.vm != "demo" {
				if err := os.Remove(tr.path(vmNameFile)); err != nil {
					t.Fatal(err)
				}
			}

			// The agent, on its own credstore and status folder.
			cfg := tr.loadConfig([]ed25519.PublicKey{hostPub})
			cfg.Credstore, cfg.StatusDir, cfg.VM = t.TempDir()+"/credstore", t.TempDir()+"/status", in.vm
			cfg.Now = func() time.Time { return in.at }
			rep, err := agent.Load(cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("agent: err %v, want ok %v", err, tc.ok)
			}
			i := slices.IndexFunc(rep.Credentials, func(c agent.CredentialResult) bool { return c.Name == tc.cred })
			if i < 0 || rep.Credentials[i].Verification != tc.agent {
				t.Fatalf("agent: %s not judged %s: %+v", tc.cred, tc.agent, rep.Credentials)
			}

			// verify, show and list, on the same inputs.
			d := tr.defaults()
			if !in.at.Equal(loadAt) {
				d.now = func() time.Time { return in.at }
			}
			args := []string{"--json"}
			if in.vm != "" && in.vm != "demo" {
				args = append(args, "--vm", in.vm)
			}
			r := run(d, append([]string{"verify"}, args...)...)
			var v policyView
			if err := json.Unmarshal(r.stdout, &v); err != nil {
				t.Fatalf("verify: %v\n%s", err, r.stderr)
			}
			if want := map[bool]int{true: 0, false: 1}[tc.ok]; r.code != want {
				t.Errorf("verify: exit %d, want %d as the agent is %s: %+v", r.code, want, rep.Outcome, v.Findings)
			}
			if tc.code != "" && !v.has(tc.code) {
				t.Errorf("verify: no %s error where the agent says %q: %+v", tc.code, rep.Problems, v.Findings)
			}
			// Per credential: what verify's FIRMWARE column says is what
			// the agent said, and a row fails exactly where the agent's
			// failed (the credstore, from the good load, is not in doubt).
			refused := rep.Credentials[i].Verification == agent.VerdictRefused
			for _, c := range rep.Credentials {
				j := slices.IndexFunc(v.Credentials, func(x struct {
					Name     string `json:"name"`
					Firmware string `json:"firmware"`
					OK       bool   `json:"ok"`
				}) bool {
					return x.Name == c.Name
				})
				if j < 0 {
					t.Errorf("verify has no row for %s, which the agent judged %s", c.Name, c.Verification)
					continue
				}
				row := v.Credentials[j]
				if refused {
					continue // verify shows the refused manifest's digests, unverified
				}
				if want := firmwareVerdict[c.Verification]; row.Firmware != want {
					t.Errorf("%s: verify says %s, the agent %s", c.Name, row.Firmware, c.Verification)
				}
				if failsInAgent := c.Problem != "" && c.Problem != agent.NotExposed; row.Firmware != "ok" && row.OK == failsInAgent {
					t.Errorf("%s: verify ok=%v, the agent's problem %q", c.Name, row.OK, c.Problem)
				}
			}

			r = run(d, append([]string{"show", tc.cred}, args...)...)
			var s policyView
			if err := json.Unmarshal(r.stdout, &s); err != nil {
				t.Fatalf("show: %v\n%s", err, r.stderr)
			}
			if tc.code != "" && !s.has(tc.code) {
				t.Errorf("show %s: no %s error: %+v", tc.cred, tc.code, s.Findings)
			}
			if tc.code == "" && slices.ContainsFunc(s.Findings, func(f debug.Finding) bool {
				return f.Severity == debug.SeverityError && (f.Credential == tc.cred || f.Credential == agent.ManifestName)
			}) {
				t.Errorf("show %s: an error where the agent found none: %+v", tc.cred, s.Findings)
			}
		})
	}
}

// TestOnePolicySaved: the manifest the agent accepted in a host session,
// saved, is judged by list, show and verify as the agent judges that
// manifest in a session (agent.Check with the session's challenge): the
// same verdict for another VM, an expired one, no trust keys, or another
// key. Only the generation, bound to a connection that is gone, is the
// agent's alone: an older one is refused there and cannot be asked of a
// saved copy.
func TestOnePolicySaved(t *testing.T) {
	hostPub := key(1).Public().(ed25519.PublicKey)
	cases := []struct {
		name  string
		pol   agent.Policy
		at    time.Time
		args  []string
		prep  func(tr *tree)
		older bool
		code  string
	}{
		{name: "accepted", pol: agent.Policy{TrustKeys: []ed25519.PublicKey{hostPub}, VM: "demo"}},
		{name: "another vm", pol: agent.Policy{TrustKeys: []ed25519.PublicKey{hostPub}, VM: "other"}, args: []string{"--vm", "other"}, code: debug.CodeManifestWrongVM},
		{name: "expired", pol: agent.Policy{TrustKeys: []ed25519.PublicKey{hostPub}, VM: "demo"}, at: issuedAt.Add(8 * 24 * time.Hour), code: debug.CodeManifestExpired},
		{name: "no trust keys", pol: agent.Policy{VM: "demo"}, prep: func(tr *tree) {
			if err := os.RemoveAll(tr.path("etc/vmcred/trusted.d")); err != nil {
				t.Fatal(err)
			}
		}, code: debug.CodeNoTrustKeys},
		{name: "another key", pol: agent.Policy{TrustKeys: []ed25519.PublicKey{key(2).Public().(ed25519.PublicKey)}, VM: "demo"}, prep: func(tr *tree) {
			tr.trust(key(2).Public().(ed25519.PublicKey))
		}, code: debug.CodeManifestUnknownKey},
		{name: "older generation", pol: agent.Policy{TrustKeys: []ed25519.PublicKey{hostPub}, VM: "demo"}, older: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := build(t, "session", fixedValue)
			env, err := os.ReadFile(tr.path(savedPath))
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := manifest.Open(env, nil)
			if err != nil {
				t.Fatal(err)
			}
			at := tc.at
			if at.IsZero() {
				at = checkAt
			}
			b := &agent.Binding{Challenge: m.Challenge, Generation: m.Generation}
			if tc.older {
				b.Generation++
			}
			res := agent.Check(tc.pol, at, agent.Input{Manifest: env, Session: true, Binding: b})
			agentOK := len(res.ManifestProblems) == 0
			if tc.older {
				if agentOK || !errors.Is(res.Refused, agent.ErrOlderGeneration) {
					t.Fatalf("agent accepted an older generation: %v", res.ManifestProblems)
				}
				agentOK = true // the rest of the policy: not the views' to ask
			}
			if agentOK != (tc.code == "") {
				t.Fatalf("agent: problems %v, want a %q finding", res.ManifestProblems, tc.code)
			}
			if tc.prep != nil {
				tc.prep(tr)
			}
			d := tr.defaults()
			d.now = func() time.Time { return at }
			for _, cmd := range [][]string{{"verify"}, {"list"}, {"show", "api-key"}} {
				r := run(d, append(append(cmd, "--json"), tc.args...)...)
				var v policyView
				if err := json.Unmarshal(r.stdout, &v); err != nil {
					t.Fatalf("%s: %v\n%s", cmd[0], err, r.stderr)
				}
				viewOK := !slices.ContainsFunc(v.Findings, func(f debug.Finding) bool { return f.Severity == debug.SeverityError })
				if viewOK != agentOK || tc.code != "" && !v.has(tc.code) {
					t.Errorf("%s: ok %v (exit %d), the agent %v; want finding %q: %+v", cmd[0], viewOK, r.code, agentOK, tc.code, v.Findings)
				}
				if cmd[0] == "verify" && r.code != map[bool]int{true: 0, false: 1}[agentOK] {
					t.Errorf("verify: exit %d for agent ok %v", r.code, agentOK)
				}
			}
		})
	}
}
