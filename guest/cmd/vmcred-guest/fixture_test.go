package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/credstore"
	"github.com/vmcred/vmcred/guest/debug"
	"github.com/vmcred/vmcred/shared/address"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/logging"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
	"go.uber.org/zap/zapcore"
)

// Fixed times, so golden files are stable.
var (
	issuedAt = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	loadAt   = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	checkAt  = time.Date(2026, 1, 2, 3, 10, 0, 0, time.UTC)
)

// valueFunc makes the value of a credential of n bytes: fixed bytes for
// golden files, random canaries for the leak test.
type valueFunc func(name string, n int) []byte

// fixedValue derives n bytes from the name, the same on every run.
func fixedValue(name string, n int) []byte {
	var out []byte
	for i := 0; len(out) < n; i++ {
		s := sha256.Sum256([]byte(name + string(rune('a'+i))))
		out = append(out, s[:]...)
	}
	return out[:n]
}

// key returns a fixed ed25519 key; seed picks which.
func key(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

// tree is a guest's file tree after one boot, under a temporary root:
// sys/firmware (what the hypervisor passed), run/credentials/@system
// (what systemd 252 imported), run/vmcred and run/credstore (the agent's
// load), etc/credstore and etc/vmcred/trusted.d.
type tree struct {
	t      *testing.T
	root   string
	val    valueFunc
	values [][]byte // every value that went anywhere
}

func newTree(t *testing.T, val valueFunc) *tree {
	t.Helper()
	tr := &tree{t: t, root: t.TempDir(), val: val}
	for _, d := range []string{"run", "sys/firmware/qemu_fw_cfg", "run/credentials/@system", "etc/vmcred"} {
		if err := os.MkdirAll(tr.path(d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	tr.write(vmNameFile, []byte("demo\n"), 0o644)
	return tr
}

// vmNameFile is where the fixtures record their VM's name, as the NixOS
// module does: the agent and the debug views both read it.
const vmNameFile = "etc/vmcred/vm-name"

func (tr *tree) path(rel string) string { return filepath.Join(tr.root, rel) }

// value makes (and remembers) the value of name.
func (tr *tree) value(name string, n int) []byte {
	v := tr.val(name, n)
	tr.values = append(tr.values, v)
	return v
}

// cred is one credential the host packs.
type cred struct {
	name   string
	value  []byte
	static bool
}

// oem formats a credential as an OEM string under prefix.
func (tr *tree) oem(prefix, name string, v []byte) string {
	tr.t.Helper()
	s, err := oemstring.Format(prefix, name, credential.NewSecret(v))
	if err != nil {
		tr.t.Fatal(err)
	}
	return string(s.Reveal())
}

// manifest returns the vmcred.manifest OEM string listing creds, signed
// with k (unsigned when nil).
func (tr *tree) manifest(k ed25519.PrivateKey, creds []cred) string {
	tr.t.Helper()
	b := manifest.NewBuilder("demo", issuedAt)
	b.SetNotAfter(issuedAt.Add(7 * 24 * time.Hour))
	for _, c := range creds {
		if err := b.Add(c.name, credential.NewSecret(c.value), manifest.DeliverySMBIOS, c.static); err != nil {
			tr.t.Fatal(err)
		}
	}
	env, err := b.Envelope(k)
	if err != nil {
		tr.t.Fatal(err)
	}
	return tr.oem(oemstring.PrefixVmcred, agent.ManifestName, env)
}

// boot lays the strings out as QEMU does in sys/firmware/dmi/tables/DMI
// and imports them into @system as systemd 252 does: one 4 KiB read of
// the type-11 entry (header included), systemd's parsing rules, first
// writer wins. It returns the names systemd imported.
func (tr *tree) boot(strs []string) map[string]int {
	tr.t.Helper()
	tab, err := smbios.BuildQEMUTable(strs)
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.write("sys/firmware/dmi/tables/DMI", tab, 0o400)
	raw := smbios.AppendStructure(nil, 11, 0x0e00, []byte{byte(len(strs))}, strs)
	if len(raw) > 4096 {
		raw = raw[:4096]
	}
	var seen []string
	for area := raw[5:]; len(area) > 0; {
		s, rest, ok := bytes.Cut(area, []byte{0})
		if !ok {
			rest = nil // systemd takes the cut string up to the end of the buffer
		}
		seen = append(seen, string(s))
		area = rest
	}
	p := oemstring.NewParser(oemstring.SystemdPrefixes...)
	p.AddStrings("smbios", seen)
	got := map[string]int{}
	for _, e := range p.Result().Entries {
		tr.write("run/credentials/@system/"+e.Name, e.Value.Reveal(), 0o400)
		got[e.Name] = e.Value.Len()
	}
	return got
}

func (tr *tree) write(rel string, b []byte, mode os.FileMode) {
	tr.t.Helper()
	p := tr.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		tr.t.Fatal(err)
	}
}

// trust puts pub in etc/vmcred/trusted.d, the default trust folder.
func (tr *tree) trust(pub ed25519.PublicKey) {
	tr.t.Helper()
	b, err := manifest.MarshalPublicKey(pub)
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.write("etc/vmcred/trusted.d/host.pub", b, 0o444)
}

// load runs the real agent over the tree, with a clock that starts at
// loadAt.
func (tr *tree) load(trusted ...ed25519.PublicKey) {
	tr.t.Helper()
	tr.loadWith(tr.loadConfig(trusted))
}

// loadConfig is the agent's configuration for the tree.
func (tr *tree) loadConfig(trusted []ed25519.PublicKey) agent.Config {
	now := loadAt
	return agent.Config{
		Root:              os.DirFS(tr.root),
		Credstore:         tr.path("run/credstore"),
		StatusDir:         tr.path("run/vmcred"),
		AllowPersistent:   true,
		TrustKeys:         trusted,
		VM:                "demo",
		SystemCredentials: tr.path("run/credentials/@system"),
		Version:           "test",
		Now: func() time.Time {
			t := now
			now = now.Add(1250 * time.Microsecond)
			return t
		},
	}
}

// loadWith runs the real agent with cfg.
func (tr *tree) loadWith(cfg agent.Config) {
	tr.t.Helper()
	_, _ = agent.Load(cfg)
	tr.fixStatus()
}

// fixStatus rewrites the status file as a VM would have it.
func (tr *tree) fixStatus() {
	tr.t.Helper()
	// The agent ran with the tree's paths; a VM's status file has the
	// guest's own. Timings are fixed so the goldens do not depend on how
	// often the agent reads its clock.
	b, err := os.ReadFile(tr.path("run/vmcred/" + agent.StatusFile))
	if err != nil {
		tr.t.Fatal(err)
	}
	var rep agent.Report
	if err := json.Unmarshal(bytes.ReplaceAll(b, []byte(tr.root), nil), &rep); err != nil {
		tr.t.Fatal(err)
	}
	rep.Timings = agent.Timings{Read: 1.5, Verify: 2.5, Write: 3, Total: 7.5}
	if err := agent.WriteStatus(tr.path("run/vmcred"), rep); err != nil {
		tr.t.Fatal(err)
	}
}

// session boots the tree as Firecracker does (no firmware at all) and
// runs the real agent (agent.New, Boot, Serve) on a Unix socket in a
// private folder; a host plays one session against it: it signs, with k,
// a manifest over the agent's challenge that lists creds as channel
// credentials, sends them, and acknowledges the report. The challenge is
// drawn from a fixed reader so the saved manifest is stable.
func (tr *tree) session(k ed25519.PrivateKey, creds []cred) {
	tr.t.Helper()
	tr.sessions(k, nil, creds)
}

// sessions runs one host session per set, in order, against one agent
// (the second and later are rotations, whose consumers rot restarts).
func (tr *tree) sessions(k ed25519.PrivateKey, rot agent.Rotator, sets ...[]cred) {
	tr.t.Helper()
	if err := os.RemoveAll(tr.path("sys/firmware")); err != nil {
		tr.t.Fatal(err)
	}
	cfg := tr.loadConfig([]ed25519.PublicKey{k.Public().(ed25519.PublicKey)})
	done := make(chan struct{}, 2)
	ag, err := agent.New(cfg, agent.Options{Rand: bytes.NewReader(bytes.Repeat([]byte{7}, 64*len(sets))), Rotator: rot,
		OnReport: func(r agent.Report, _ error) { done <- struct{}{} }})
	if err != nil {
		tr.t.Fatal(err)
	}
	ag.Boot()
	<-done
	sock := filepath.Join(tr.t.TempDir(), "agent.sock")
	l, err := agent.Listen(address.Address{Kind: address.Unix, Path: sock})
	if err != nil {
		tr.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { _ = ag.Serve(ctx, l); close(served) }()
	defer func() { cancel(); <-served }()
	for _, creds := range sets {
		tr.oneSession(k, sock, creds)
		<-done
	}
	tr.fixStatus()
}

func (tr *tree) oneSession(k ed25519.PrivateKey, sock string, creds []cred) {
	tr.t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		tr.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := proto.ReadMagic(c); err != nil {
		tr.t.Fatal(err)
	}
	h := proto.NewHost(c)
	ch, err := h.ReadChallenge()
	if err != nil {
		tr.t.Fatal(err)
	}
	b := manifest.NewBuilder("demo", issuedAt)
	b.SetNotAfter(issuedAt.Add(7 * 24 * time.Hour))
	b.SetSession(ch.Nonce, ch.Generation+1)
	var send []proto.Credential
	for _, c := range creds {
		if err := b.Add(c.name, credential.NewSecret(c.value), manifest.DeliveryChannel, c.static); err != nil {
			tr.t.Fatal(err)
		}
		send = append(send, proto.Credential{Name: c.name, Value: credential.NewSecret(c.value)})
	}
	env, err := b.Envelope(k)
	if err != nil {
		tr.t.Fatal(err)
	}
	if err := h.WriteManifest(env); err != nil {
		tr.t.Fatal(err)
	}
	if err := h.WriteCredentials(send); err != nil {
		tr.t.Fatal(err)
	}
	r, err := h.ReadReport()
	if err != nil {
		tr.t.Fatal(err)
	}
	_ = h.WriteAck("host recorded: " + r.Outcome.String())
}

// fixedRotator stands for guest/consumers over systemd in the golden
// fixtures: app.service uses api-key and is restarted, audit.service's
// credential has policy none.
type fixedRotator struct{}

func (fixedRotator) Rotated(_ context.Context, ch []agent.Change) ([]agent.UnitOutcome, error) {
	var out []agent.UnitOutcome
	for _, c := range ch {
		if c.Name == "api-key" {
			out = append(out, agent.UnitOutcome{Unit: "app.service", Action: "restart", Credentials: []string{"api-key"}, Result: "active", OK: true})
		}
	}
	return out, nil
}

// defaults are the production ones with the tree as --root. Files are
// rated as on a VM: @system on ramfs, the other folders on tmpfs without
// noswap.
func (tr *tree) defaults() defaults {
	d := productionDefaults()
	d.root = tr.root
	d.listDir = ratedAsInVM
	d.now = func() time.Time { return checkAt }
	return d
}

// ratedAsInVM lists dir with credstore.List and rates the files as they
// would be in a VM, whatever the test machine's file systems are.
func ratedAsInVM(dir string) ([]credstore.FileInfo, error) {
	infos, err := credstore.List(dir)
	for i := range infos {
		fi := &infos[i]
		fi.Filesystem = credstore.Tmpfs
		if filepath.Base(dir) == "@system" {
			fi.Filesystem = credstore.Ramfs
		}
		switch {
		case fi.Mode&0o377 != 0:
			fi.Security = credstore.Insecure
		case fi.Filesystem == credstore.Ramfs:
			fi.Security = credstore.Secure
		default:
			fi.Security = credstore.Weak
		}
	}
	return infos, err
}

// result is one command run in-process.
type result struct {
	stdout, stderr []byte
	code           int
}

// run runs vmcred-guest with args against d, as main would.
func run(d defaults, args ...string) result {
	var out, errb bytes.Buffer
	log := logging.New(&errb, logging.Config{Level: zapcore.DebugLevel, Name: "vmcred-guest"})
	env := &cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Log: log, Version: "test"}
	code := cli.Main(context.Background(), "vmcred-guest", d.commands(), args, env)
	return result{stdout: out.Bytes(), stderr: errb.Bytes(), code: code}
}

// scenario builds one tree.
type scenario struct {
	name  string
	build func(tr *tree)
}

// scenarios are the fixtures: a good load; one that failed (a value
// altered, one missing, one unlisted under vmcred's prefix, a bad
// string); one where systemd 252 truncated a credential in @system; a
// manifest signed by an unknown key; a good load shadowed by a different
// file in /etc/credstore; a boot where the agent never ran; and a good
// host session (Firecracker: no firmware, everything in the session, the
// manifest saved in the status folder).
func scenarios() []scenario {
	return []scenario{
		{"good", func(tr *tree) {
			k := key(1)
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: "db-password", value: tr.value("db-password", 24)}, {name: "ENVIRONMENT", value: tr.value("ENVIRONMENT", 12), static: true}}
			strs := []string{tr.manifest(k, creds)}
			for _, c := range creds {
				strs = append(strs, tr.oem(oemstring.PrefixVmcred, c.name, c.value))
			}
			tr.boot(strs)
			tr.trust(k.Public().(ed25519.PublicKey))
			tr.load(k.Public().(ed25519.PublicKey))
		}},
		{"failed", func(tr *tree) {
			k := key(1)
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: "db-password", value: tr.value("db-password", 24)}, {name: "jwt-secret", value: tr.value("jwt-secret", 48)}, {name: "ENVIRONMENT", value: tr.value("ENVIRONMENT", 12), static: true}}
			strs := []string{tr.manifest(k, creds),
				tr.oem(oemstring.PrefixVmcred, "api-key", tr.value("api-key-altered", 32)),
				tr.oem(oemstring.PrefixVmcred, "db-password", creds[1].value),
				tr.oem(oemstring.PrefixVmcred, "ENVIRONMENT", creds[3].value),
				tr.oem(oemstring.PrefixVmcred, "debug-token", tr.value("debug-token", 16)),
				tr.oem(oemstring.PrefixBinary, "vmm.notify_socket", tr.value("vmm.notify_socket", 19)),
				"io.systemd.credential:bad:name=x",
			}
			tr.boot(strs)
			tr.trust(k.Public().(ed25519.PublicKey))
			tr.load(k.Public().(ed25519.PublicKey))
		}},
		{"truncated", func(tr *tree) {
			// Pack in systemd mode: systemd imports the credentials too,
			// and its 4 KiB read cuts tls-key. The static's name is chosen
			// so the cut lands on a base64 group boundary: systemd then
			// decodes a shorter value instead of dropping the string.
			k := key(1)
			for _, static := range []string{"CLUSTER", "CLUSTER1", "CLUSTER12", "CLUSTER123"} {
				creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: static, value: tr.value(static, 12), static: true}, {name: "tls-key", value: tr.value("tls-key", 5000)}}
				strs := []string{tr.manifest(k, creds)}
				for _, c := range creds {
					strs = append(strs, tr.oem(oemstring.PrefixBinary, c.name, c.value))
				}
				if n, ok := tr.boot(strs)["tls-key"]; ok && n < 5000 {
					tr.trust(k.Public().(ed25519.PublicKey))
					tr.load(k.Public().(ed25519.PublicKey))
					return
				}
				if err := os.RemoveAll(tr.path("run/credentials/@system")); err != nil {
					tr.t.Fatal(err)
				}
			}
			tr.t.Fatal("no static name makes systemd's cut decode")
		}},
		{"unknown-key", func(tr *tree) {
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}}
			tr.boot([]string{tr.manifest(key(2), creds), tr.oem(oemstring.PrefixVmcred, "api-key", creds[0].value)})
			tr.trust(key(1).Public().(ed25519.PublicKey))
			tr.load(key(1).Public().(ed25519.PublicKey))
		}},
		{"shadowed", func(tr *tree) {
			k := key(1)
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: "db-password", value: tr.value("db-password", 24)}}
			strs := []string{tr.manifest(k, creds)}
			for _, c := range creds {
				strs = append(strs, tr.oem(oemstring.PrefixVmcred, c.name, c.value))
			}
			tr.boot(strs)
			tr.trust(k.Public().(ed25519.PublicKey))
			tr.load(k.Public().(ed25519.PublicKey))
			tr.write("etc/credstore/db-password", tr.value("db-password-old", 20), 0o400)
		}},
		{"session", func(tr *tree) {
			k := key(1)
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: "db-password", value: tr.value("db-password", 24)}, {name: "ENVIRONMENT", value: tr.value("ENVIRONMENT", 12), static: true}}
			tr.trust(k.Public().(ed25519.PublicKey))
			tr.session(k, creds)
		}},
		{"rotated", func(tr *tree) {
			k := key(1)
			db := tr.value("db-password", 24)
			first := []cred{{name: "api-key", value: tr.value("api-key-old", 32)}, {name: "db-password", value: db}, {name: "old-token", value: tr.value("old-token", 16)}}
			second := []cred{{name: "api-key", value: tr.value("api-key", 32)}, {name: "db-password", value: db}}
			tr.trust(k.Public().(ed25519.PublicKey))
			tr.sessions(k, fixedRotator{}, first, second)
		}},
		{"no-status", func(tr *tree) {
			k := key(1)
			creds := []cred{{name: "api-key", value: tr.value("api-key", 32)}}
			tr.boot([]string{tr.manifest(k, creds), tr.oem(oemstring.PrefixVmcred, "api-key", creds[0].value)})
			tr.trust(k.Public().(ed25519.PublicKey))
		}},
	}
}

// build builds the named scenario.
func build(t *testing.T, name string, val valueFunc) *tree {
	t.Helper()
	for _, s := range scenarios() {
		if s.name == name {
			tr := newTree(t, val)
			s.build(tr)
			return tr
		}
	}
	t.Fatalf("no scenario %q", name)
	return nil
}

// randomValue is a fresh random canary.
func randomValue(_ string, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// normalize replaces the tree's root in output, so goldens show the
// paths a VM would have.
func (tr *tree) normalize(b []byte) []byte {
	return bytes.ReplaceAll(b, []byte(tr.root), nil)
}

// hasLongLine returns the first line of s wider than debug.Width.
func hasLongLine(s string) (string, bool) {
	for _, l := range strings.Split(s, "\n") {
		if len([]rune(l)) > debug.Width {
			return l, true
		}
	}
	return "", false
}
