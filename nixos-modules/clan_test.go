package nixosmodules

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/manifest"
)

// The tests in this file evaluate vmcred's clan service (clan/) the way a
// clan evaluates it: clan-core's own service evaluation and vars module
// (tests/third_party/clan-core, unmodified) inside tests/harness.nix (real
// nixpkgs lib, microvm.nix's real host module), through tests/clan.nix and
// tests/clan-seed.nix. The generator scripts they run are clan's own
// finalScript text for the evaluated generators, run the way clan's
// Generator.execute runs them.
//
// clan's whole inventory evaluation (clanLib.clan) does not run here: it
// builds each machine with nixpkgs.lib.nixosSystem, i.e. all of NixOS's
// modules and nixpkgs' packages, and clan-core's flake-parts modules and
// full clanCore module tree, none of which is available offline. The part
// of it that matters for a clan service, turning an inventory instance into
// a machine's NixOS module, is clan's own
// lib/inventory/distributed-service/service-module.nix, which tests/clan.nix
// evaluates unmodified (see there for what is a stand-in).

const (
	clanHost = "britton-desktop"
	clanVM   = "test-vm"
)

var (
	secretsGen = "vmcred-" + clanVM + "-secrets"
	signingGen = "vmcred-" + clanVM + "-signing"
)

// clanFile is one file of a generator, as tests/clan-extra.nix prints it.
type clanFile struct {
	Secret       bool
	Deploy       bool
	Owner        string
	Group        string
	Mode         string
	NeededFor    string
	RestartUnits []string
	Path         *string
	Value        *string
}

type clanGenerator struct {
	Share          bool
	ValidationHash *string
	Files          map[string]clanFile
	Prompts        map[string]struct{ Type string }
	RuntimeInputs  []string
	FinalScript    string
}

type clanVMWiring struct {
	Hypervisor     *string
	Static         map[string]string
	SigningKeyFile *string
	Credentials    map[string]string
	Cid            *int
}

type clanExtra struct {
	Generators  map[string]clanGenerator
	SopsSecrets map[string]clanFile
	Vmcred      map[string]clanVMWiring
	MicrovmUser map[string]any
	VMCids      map[string]*int `json:"vmCids"`
}

// clanHostEval is what tests/harness.nix prints (see there), with the
// clan part in Extra.
type clanHostEval struct {
	FailedAssertions []string
	Warnings         []string
	Units            map[string]string
	Etc              map[string]string
	Vms              map[string]vmEval
	Extra            clanExtra
}

// clanCase is one evaluation of tests/clan-seed.nix: the seed's instance
// unless Settings (the host role's settings, as JSON) or Instances is set.
type clanCase struct {
	Directory    string
	Machine      string // default: the host
	Settings     map[string]any
	Instances    map[string]any
	ExtraModules []string // Nix expressions of modules
	// Example: evaluate tests/clan-example.nix (examples/test-vm.nix, its
	// generators declared by hand) instead; only Directory applies.
	Example bool
}

func (c clanCase) expr(t *testing.T) string {
	t.Helper()
	if c.Example {
		return fmt.Sprintf("import %s { directory = %q; }", abs(t, "tests/clan-example.nix"), c.Directory)
	}
	args := []string{fmt.Sprintf("directory = %q;", c.Directory)}
	if c.Machine != "" {
		args = append(args, fmt.Sprintf("machine = %q;", c.Machine))
	}
	if c.Settings != nil {
		args = append(args, "settings = "+nixJSON(t, c.Settings)+";")
	}
	if c.Instances != nil {
		args = append(args, "instances = "+nixJSON(t, c.Instances)+";")
	}
	if len(c.ExtraModules) > 0 {
		args = append(args, "extraModules = [ "+strings.Join(c.ExtraModules, " ")+" ];")
	}
	return fmt.Sprintf("import %s { %s }", abs(t, "tests/clan-seed.nix"), strings.Join(args, " "))
}

// nixJSON is v as a Nix expression (through builtins.fromJSON).
func nixJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("(builtins.fromJSON %q)", string(b))
}

// clanEval evaluates attribute attr ("" for all) of tests/harness.nix for
// the case and decodes it into out. The store is a throwaway folder: the
// stand-in pkgs write scripts there, nothing is built.
func clanEval(t *testing.T, c clanCase, attr string, out any) error {
	t.Helper()
	ni := testenv.NeedTool(t, "nix-instantiate", nixHint)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := []string{"--read-write-mode", "--store", filepath.Join(t.TempDir(), "store"),
		"--eval", "--strict", "--json", abs(t, "tests/harness.nix"),
		"--arg", "case", c.expr(t),
		"--arg", "extra", "import " + abs(t, "tests/clan-extra.nix")}
	if attr != "" {
		args = append(args, "-A", attr)
	}
	cmd := exec.CommandContext(ctx, ni, args...)
	cmd.Env = nixEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nix-instantiate: %v\n%s", err, stderr.String())
	}
	return json.Unmarshal(stdout.Bytes(), out)
}

func mustClanExtra(t *testing.T, c clanCase) clanExtra {
	t.Helper()
	var e clanExtra
	if err := clanEval(t, c, "extra", &e); err != nil {
		t.Fatal(err)
	}
	return e
}

// buildVmcredHost builds the real vmcred-host into a temporary folder.
func buildVmcredHost(t *testing.T) string {
	t.Helper()
	goTool := testenv.NeedTool(t, "go", "install Go (see go.mod)")
	bin := filepath.Join(t.TempDir(), "vmcred-host")
	cmd := exec.Command(goTool, "build", "-o", bin, "../host/cmd/vmcred-host")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build vmcred-host: %v\n%s", err, out)
	}
	return bin
}

// GNU coreutils' programs: the stand-in for pkgs.coreutils links the ones
// this machine has.
var coreutilsPrograms = strings.Fields(`arch b2sum base32 base64 basename basenc cat chcon chgrp chmod chown
	chroot cksum comm cp csplit cut date dd df dir dircolors dirname du echo env expand expr factor false
	fmt fold groups head hostid id install join link ln logname ls md5sum mkdir mkfifo mknod mktemp mv
	nice nl nohup nproc numfmt od paste pathchk pinky pr printenv printf ptx pwd readlink realpath rm
	rmdir runcon seq sha1sum sha224sum sha256sum sha384sum sha512sum shred shuf sleep sort split stat
	stdbuf stty sum sync tac tail tee test timeout touch tr true truncate tsort tty uname unexpand uniq
	unlink users vdir wc who whoami yes`)

// clanPackages makes, for each package name a generator's runtimeInputs
// may hold, a folder with that package's programs from this machine
// (symlinks), standing in for /nix/store/<hash>-<name>: coreutils, openssl,
// and vmcred's package (the stand-in pkgs names it after package.nix).
func clanPackages(t *testing.T, vmcredHost string) map[string]string {
	t.Helper()
	root := t.TempDir()
	dirs := map[string]string{}
	add := func(name string, programs map[string]string) {
		bin := filepath.Join(root, name, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for prog, target := range programs {
			if err := os.Symlink(target, filepath.Join(bin, prog)); err != nil {
				t.Fatal(err)
			}
		}
		dirs[name] = bin
	}
	core := map[string]string{}
	for _, p := range coreutilsPrograms {
		if path, err := exec.LookPath(p); err == nil {
			core[p] = path
		}
	}
	for _, p := range []string{"head", "tr", "cat", "printf"} {
		if core[p] == "" {
			testenv.SkipOrFail(t, "coreutils program %s not found: apt-get install coreutils", p)
		}
	}
	add("coreutils", core)
	add("openssl", map[string]string{"openssl": testenv.NeedTool(t, "openssl", "apt-get install -y openssl")})
	add("package.nix", map[string]string{"vmcred-host": vmcredHost})
	return dirs
}

// storeBin matches one PATH entry of clan's finalScript: a runtimeInput's
// bin folder.
var storeBin = regexp.MustCompile(`^/nix/store/[0-9a-z]{32}-(.+)/bin$`)

// generatorRun is the result of one generator run: the files of $out.
type generatorRun struct {
	Dir    string // the temporary folder (cwd; in/, out/, prompts/)
	Files  map[string][]byte
	Modes  map[string]os.FileMode
	Stderr string
}

// runGenerator runs a generator's finalScript as clan's
// Generator.execute does (clan_lib/vars/generator.py): a temporary folder
// with in/, out/ and (with prompts) prompts/ holding one file per prompt
// (the value, no newline added); $in, $out, $prompts in the environment;
// `bash -c <script>` in that folder. The script's PATH line (clan's
// makeBinPath of runtimeInputs ++ [ coreutils ]) is rewritten to the
// stand-in package folders, entry by entry; an unknown package fails the
// test. Clan runs it in a bubblewrap sandbox, this does not. After the
// script, every declared file must exist, as clan requires.
func runGenerator(t *testing.T, g clanGenerator, pkgs map[string]string, prompts map[string]string) (generatorRun, error) {
	t.Helper()
	tmp := t.TempDir()
	for _, d := range []string{"in", "out"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"in=" + filepath.Join(tmp, "in"), "out=" + filepath.Join(tmp, "out"), "HOME=" + tmp}
	if len(g.Prompts) > 0 {
		pd := filepath.Join(tmp, "prompts")
		if err := os.Mkdir(pd, 0o700); err != nil {
			t.Fatal(err)
		}
		for name := range g.Prompts {
			v, ok := prompts[name]
			if !ok {
				t.Fatalf("no value for prompt %s", name)
			}
			if err := os.WriteFile(filepath.Join(pd, name), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env = append(env, "prompts="+pd)
	}

	var lines []string
	pathSeen := false
	for _, line := range strings.Split(g.FinalScript, "\n") {
		if rest, ok := strings.CutPrefix(line, "PATH="); ok && !pathSeen {
			pathSeen = true
			var dirs []string
			for _, e := range strings.Split(rest, ":") {
				m := storeBin.FindStringSubmatch(e)
				if m == nil || pkgs[m[1]] == "" {
					t.Fatalf("finalScript PATH entry %q: no stand-in package for it", e)
				}
				dirs = append(dirs, pkgs[m[1]])
			}
			line = "PATH=" + strings.Join(dirs, ":")
		}
		lines = append(lines, line)
	}
	if !pathSeen {
		t.Fatalf("finalScript has no PATH= line:\n%s", g.FinalScript)
	}
	script := filepath.Join(tmp, "final-script")
	if err := os.WriteFile(script, []byte(strings.Join(lines, "\n")), 0o700); err != nil {
		t.Fatal(err)
	}

	bash := testenv.NeedTool(t, "bash", "apt-get install bash")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "-c", script)
	cmd.Dir, cmd.Env = tmp, env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	run := generatorRun{Dir: tmp, Files: map[string][]byte{}, Modes: map[string]os.FileMode{}}
	err := cmd.Run()
	run.Stderr = stdout.String() + stderr.String()
	if err != nil {
		return run, fmt.Errorf("generator script: %w", err)
	}
	for name := range g.Files {
		b, err := os.ReadFile(filepath.Join(tmp, "out", name))
		if err != nil {
			return run, fmt.Errorf("did not generate a file for %q: %w", name, err)
		}
		run.Files[name] = b
		if fi, err := os.Lstat(filepath.Join(tmp, "out", name)); err == nil {
			run.Modes[name] = fi.Mode()
		}
	}
	return run, nil
}

// clanRepo is a clan repository's vars folder as `clan vars generate`
// leaves it with the sops and in_repo stores: per generator
// vars/per-machine/<machine>/<generator>/<file>/secret (sops-encrypted in
// clan; here the plaintext, a stand-in: only its existence is read at
// evaluation) or .../value (public), and .validation-hash.
type clanRepo struct{ dir string }

func (r clanRepo) genDir(gen string) string {
	return filepath.Join(r.dir, "vars", "per-machine", clanHost, gen)
}

func (r clanRepo) store(t *testing.T, gen string, g clanGenerator, run generatorRun) {
	t.Helper()
	for name, f := range g.Files {
		kind := "value"
		if f.Secret {
			kind = "secret"
		}
		p := filepath.Join(r.genDir(gen), name, kind)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, run.Files[name], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hash := filepath.Join(r.genDir(gen), ".validation-hash")
	if g.ValidationHash == nil {
		os.Remove(hash)
	} else if err := os.WriteFile(hash, []byte(*g.ValidationHash), 0o600); err != nil {
		t.Fatal(err)
	}
}

// needsGeneration is clan's rule (clan_lib/vars/generator.py
// Generator.exists, _types.py StoreBase.hash_is_valid): a generator runs
// when a file is missing or the stored validation hash differs from the
// evaluated one (neither set counts as equal).
func (r clanRepo) needsGeneration(gen string, g clanGenerator) bool {
	for name, f := range g.Files {
		kind := "value"
		if f.Secret {
			kind = "secret"
		}
		if _, err := os.Stat(filepath.Join(r.genDir(gen), name, kind)); err != nil {
			return true
		}
	}
	stored, err := os.ReadFile(filepath.Join(r.genDir(gen), ".validation-hash"))
	if err != nil {
		return g.ValidationHash != nil
	}
	return g.ValidationHash == nil || *g.ValidationHash != strings.TrimSpace(string(stored))
}

// generate runs `clan vars generate` for the generators of e: each one
// that needs it is run and stored. It returns the names it ran.
func (r clanRepo) generate(t *testing.T, e clanExtra, pkgs map[string]string, prompts map[string]string) []string {
	t.Helper()
	var ran []string
	for _, gen := range sortedKeys(e.Generators) {
		g := e.Generators[gen]
		if !r.needsGeneration(gen, g) {
			continue
		}
		run, err := runGenerator(t, g, pkgs, prompts)
		if err != nil {
			t.Fatalf("generator %s: %v\n%s", gen, err, run.Stderr)
		}
		for name, f := range g.Files {
			if f.Secret && len(run.Files[name]) > 0 && strings.Contains(run.Stderr, string(run.Files[name])) {
				t.Errorf("generator %s printed the value of its secret %s", gen, name)
			}
		}
		r.store(t, gen, g, run)
		ran = append(ran, gen)
	}
	return ran
}

func (r clanRepo) read(t *testing.T, gen, file string) []byte {
	t.Helper()
	for _, kind := range []string{"secret", "value"} {
		if b, err := os.ReadFile(filepath.Join(r.genDir(gen), file, kind)); err == nil {
			return b
		}
	}
	t.Fatalf("%s/%s was never generated", gen, file)
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// seedSettings is the host role's settings of tests/clan-seed.nix, as
// JSON, for cases that change one thing.
func seedSettings() map[string]any {
	return map[string]any{
		"hypervisor": "cloud-hypervisor",
		"credentials": map[string]any{
			"API_KEY":     map[string]any{"generate": map[string]any{}},
			"DB_PASSWORD": map[string]any{"generate": map[string]any{}},
			"JWT_SECRET":  map[string]any{"generate": map[string]any{"length": 64}},
		},
		"staticOEMStrings": []string{
			"io.systemd.credential:ENVIRONMENT=test",
			"io.systemd.credential:CLUSTER=britton-desktop",
		},
		"vsock":     map[string]any{"cid": 3},
		"consumers": []string{"demo-oem-credentials"},
	}
}

const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

func onlyFrom(b []byte, alphabet string) bool {
	for _, c := range b {
		if !strings.ContainsRune(alphabet, rune(c)) {
			return false
		}
	}
	return true
}

// verifyKeyPair checks that the generated signing key pair is one
// vmcred-host accepts and signs with: the real vmcred-host packs the
// generated secrets with --sign-key, and the manifest it writes opens
// (signature verified) with the generated public key.
func verifyKeyPair(t *testing.T, vmcredHost string, r clanRepo) ed25519.PublicKey {
	t.Helper()
	keyFile := filepath.Join(r.genDir(signingGen), "signing.key", "secret")
	priv, err := manifest.ParsePrivateKey(r.read(t, signingGen, "signing.key"))
	if err != nil {
		t.Fatalf("signing.key: %v", err)
	}
	pub, err := manifest.ParsePublicKey(r.read(t, signingGen, "signing.pub"))
	if err != nil {
		t.Fatalf("signing.pub: %v", err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("signing.pub is not the public half of signing.key")
	}

	rt := filepath.Join(t.TempDir(), "run")
	args := []string{"pack", "--vm", clanVM, "--hypervisor", "qemu", "--sign-key", keyFile,
		"--static", "ENVIRONMENT=test", "--runtime-dir", rt}
	for _, c := range []string{"API_KEY", "DB_PASSWORD", "JWT_SECRET"} {
		args = append(args, "--cred", c+"=file:"+filepath.Join(r.genDir(secretsGen), c, "secret"))
	}
	cmd := exec.Command(vmcredHost, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("vmcred-host pack --sign-key: %v\n%s", err, out.String())
	}
	entries, err := os.ReadDir(rt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(rt, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		_, b64, ok := strings.Cut(string(b), "vmcred.manifest=")
		if !ok {
			continue
		}
		env, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(b64))
		if err != nil {
			t.Fatal(err)
		}
		m, v, err := manifest.Open(env, []ed25519.PublicKey{pub})
		if err != nil {
			t.Fatalf("the manifest signed with the generated key does not verify with the generated public key: %v", err)
		}
		if !strings.Contains(v.String(), manifest.KeyID(pub)) || len(m.Entries) < 4 {
			t.Fatalf("verification %q, %d entries", v.String(), len(m.Entries))
		}
		return pub
	}
	t.Fatalf("no manifest among pack's files in %s", rt)
	return nil
}

// TestClanGenerators runs the seed instance's generator scripts for real
// (clan's finalScript text, runtimeInputs on PATH, clan's $out layout),
// then evaluates again with their results in the clan repository, and
// checks which changes make clan generate again.
func TestClanGenerators(t *testing.T) {
	vmcredHost := buildVmcredHost(t)
	pkgs := clanPackages(t, vmcredHost)
	repo := clanRepo{dir: t.TempDir()}

	e := mustClanExtra(t, clanCase{Directory: repo.dir})
	if got := sortedKeys(e.Generators); strings.Join(got, " ") != secretsGen+" "+signingGen {
		t.Fatalf("generators %v, want %s and %s", got, secretsGen, signingGen)
	}
	if ran := repo.generate(t, e, pkgs, nil); len(ran) != 2 {
		t.Fatalf("first generate ran %v, want both generators", ran)
	}

	// Sizes and alphabet; three different values.
	seen := map[string]bool{}
	for name, want := range map[string]int{"API_KEY": 32, "DB_PASSWORD": 32, "JWT_SECRET": 64} {
		v := repo.read(t, secretsGen, name)
		if len(v) != want || !onlyFrom(v, alnum) {
			t.Errorf("%s: %d bytes (want %d), only A-Za-z0-9: %v", name, len(v), want, onlyFrom(v, alnum))
		}
		if seen[string(v)] {
			t.Errorf("%s repeats another credential's value", name)
		}
		seen[string(v)] = true
	}
	pub := verifyKeyPair(t, vmcredHost, repo)

	// Evaluated again with the values in the repository: the secret paths
	// are sops-nix's, the public key is the generated file.
	e = mustClanExtra(t, clanCase{Directory: repo.dir})
	if got := e.Generators[signingGen].Files["signing.pub"].Value; got == nil || *got != string(repo.read(t, signingGen, "signing.pub")) {
		t.Errorf("signing.pub value %v, want the generated public key", got)
	}
	if p, _ := manifest.ParsePublicKey([]byte(*e.Generators[signingGen].Files["signing.pub"].Value)); !p.Equal(pub) {
		t.Error("the evaluated public key differs from the generated one")
	}
	for c, path := range e.Vmcred[clanVM].Credentials {
		if want := "/run/secrets/vars/per-machine/" + clanHost + "/" + secretsGen + "/" + c; path != want {
			t.Errorf("credential %s file %s, want %s", c, path, want)
		}
	}

	snapshot := func() map[string]string {
		m := map[string]string{}
		for _, f := range []string{"API_KEY", "DB_PASSWORD", "JWT_SECRET"} {
			m[f] = string(repo.read(t, secretsGen, f))
		}
		m["signing.key"] = string(repo.read(t, signingGen, "signing.key"))
		return m
	}
	before := snapshot()

	settings := func(change func(s map[string]any)) clanCase {
		s := seedSettings()
		change(s)
		return clanCase{Directory: repo.dir, Settings: s}
	}
	for _, tc := range []struct {
		name string
		c    clanCase
		want []string // generators that run
	}{
		{"same settings", clanCase{Directory: repo.dir}, nil},
		{"static strings, CID and hypervisor changed", settings(func(s map[string]any) {
			s["staticOEMStrings"] = []string{"io.systemd.credential:ENVIRONMENT=prod"}
			s["vsock"] = map[string]any{"cid": 7}
			s["hypervisor"] = "qemu"
		}), nil},
		{"rotation asked", settings(func(s map[string]any) { s["rotation"] = 1 }), []string{secretsGen}},
		{"rotation asked, second run", settings(func(s map[string]any) { s["rotation"] = 1 }), nil},
		{"length changed", settings(func(s map[string]any) {
			s["rotation"] = 1
			s["credentials"].(map[string]any)["JWT_SECRET"] = map[string]any{"generate": map[string]any{"length": 48}}
		}), []string{secretsGen}},
		{"signing key rotation asked", settings(func(s map[string]any) {
			s["rotation"] = 1
			s["credentials"].(map[string]any)["JWT_SECRET"] = map[string]any{"generate": map[string]any{"length": 48}}
			s["signingKey"] = map[string]any{"rotation": 1}
		}), []string{signingGen}},
	} {
		e := mustClanExtra(t, tc.c)
		ran := repo.generate(t, e, pkgs, nil)
		if strings.Join(ran, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%s: clan vars generate ran %v, want %v", tc.name, ran, tc.want)
		}
		after := snapshot()
		for f, v := range after {
			changed := v != before[f]
			wantChanged := (f == "signing.key" && contains(tc.want, signingGen)) || (f != "signing.key" && contains(tc.want, secretsGen))
			if changed != wantChanged {
				t.Errorf("%s: %s changed: %v, want %v", tc.name, f, changed, wantChanged)
			}
		}
		before = after
	}
	if v := repo.read(t, secretsGen, "JWT_SECRET"); len(v) != 48 {
		t.Errorf("JWT_SECRET after the length change: %d bytes, want 48", len(v))
	}
	verifyKeyPair(t, vmcredHost, repo)
}

// TestClanGeneratorKinds runs the secrets generator for each way of making
// a value, with hostile alphabets (tr and shell syntax must stay literal),
// and the failures: an empty prompt, a script that prints nothing or fails.
func TestClanGeneratorKinds(t *testing.T) {
	pkgs := clanPackages(t, "/nonexistent/vmcred-host")
	hostile := `a-z\[]^:`
	shellish := "'\"$`!*;"
	s := seedSettings()
	s["credentials"] = map[string]any{
		"TOKEN":       map[string]any{"prompt": map[string]any{}},
		"FROM_SCRIPT": map[string]any{"generate": map[string]any{"script": "printf %s script-value\necho to-stderr >&2"}},
		"BITS":        map[string]any{"generate": map[string]any{"length": 512, "alphabet": "01"}},
		"TR_SYNTAX":   map[string]any{"generate": map[string]any{"length": 400, "alphabet": hostile}},
		"SHELL":       map[string]any{"generate": map[string]any{"length": 400, "alphabet": shellish}},
		"RENAMED":     map[string]any{"generate": map[string]any{}, "fileName": "renamed-file"},
	}
	repo := clanRepo{dir: t.TempDir()}
	e := mustClanExtra(t, clanCase{Directory: repo.dir, Settings: s})
	g := e.Generators[secretsGen]
	if got := strings.Join(sortedKeys(g.Files), " "); got != "BITS FROM_SCRIPT SHELL TOKEN TR_SYNTAX renamed-file" {
		t.Fatalf("files %s", got)
	}
	if p, ok := g.Prompts["TOKEN"]; !ok || p.Type != "hidden" || len(g.Prompts) != 1 {
		t.Fatalf("prompts %+v, want TOKEN (hidden) only", g.Prompts)
	}

	const promptValue = "pr0mpt value\nwith two lines"
	run, err := runGenerator(t, g, pkgs, map[string]string{"TOKEN": promptValue})
	if err != nil {
		t.Fatalf("%v\n%s", err, run.Stderr)
	}
	// Before generation clan's sops store has no path for the files (it
	// says /no-such-path); after it, RENAMED loads its renamed file.
	repo.store(t, secretsGen, g, run)
	if got := mustClanExtra(t, clanCase{Directory: repo.dir, Settings: s}).Vmcred[clanVM].Credentials["RENAMED"]; got != "/run/secrets/vars/per-machine/"+clanHost+"/"+secretsGen+"/renamed-file" {
		t.Errorf("RENAMED loads %s", got)
	}
	if got := string(run.Files["TOKEN"]); got != promptValue {
		t.Errorf("TOKEN is %q, want the prompt's value byte for byte", got)
	}
	if strings.Contains(run.Stderr, "pr0mpt") {
		t.Errorf("the prompt's value reached the generator's output: %q", run.Stderr)
	}
	if got := string(run.Files["FROM_SCRIPT"]); got != "script-value" {
		t.Errorf("FROM_SCRIPT is %q (standard error must not go into the value)", got)
	}
	bits := run.Files["BITS"]
	if len(bits) != 512 || !onlyFrom(bits, "01") || !bytes.Contains(bits, []byte("0")) || !bytes.Contains(bits, []byte("1")) {
		t.Errorf("BITS: %d bytes, only 0 and 1 and both: %q", len(bits), bits)
	}
	for name, alphabet := range map[string]string{"TR_SYNTAX": hostile, "SHELL": shellish} {
		v := run.Files[name]
		if len(v) != 400 || !onlyFrom(v, alphabet) {
			t.Errorf("%s: %d bytes, only from %q: %v (%q)", name, len(v), alphabet, onlyFrom(v, alphabet), v)
		}
		for _, c := range alphabet {
			if !strings.ContainsRune(string(v), c) {
				t.Errorf("%s never drew %q in 400 characters", name, c)
			}
		}
	}
	// Files in $out are the owner's only (umask 077) while clan encrypts them.
	for name, mode := range run.Modes {
		if mode.Perm()&0o077 != 0 {
			t.Errorf("$out/%s has mode %v: readable by others on the machine running clan vars generate", name, mode)
		}
	}

	// Failures: the generator fails naming the credential, never its value.
	for _, tc := range []struct {
		name    string
		creds   map[string]any
		prompts map[string]string
		want    string
	}{
		{"empty prompt", map[string]any{"TOKEN": map[string]any{"prompt": map[string]any{}}},
			map[string]string{"TOKEN": ""}, "credential TOKEN of VM test-vm: nothing was entered at the prompt"},
		{"script prints nothing", map[string]any{"S": map[string]any{"generate": map[string]any{"script": "true"}}},
			nil, "credential S of VM test-vm: the generate.script printed nothing"},
		{"script fails", map[string]any{"S": map[string]any{"generate": map[string]any{"script": "printf %s half-a-secret; exit 3"}}},
			nil, ""},
		{"file name with shell syntax", map[string]any{"a$(touch pwned)b": map[string]any{"generate": map[string]any{}}},
			nil, "credential a$(touch pwned)b of VM test-vm: fileName must match"},
		{"file name leaving $out", map[string]any{"X": map[string]any{"generate": map[string]any{}, "fileName": "../escaped"}},
			nil, "credential X of VM test-vm: fileName must match"},
	} {
		s := seedSettings()
		s["credentials"] = tc.creds
		e := mustClanExtra(t, clanCase{Directory: repo.dir, Settings: s})
		run, err := runGenerator(t, e.Generators[secretsGen], pkgs, tc.prompts)
		if err == nil {
			t.Errorf("%s: the generator succeeded", tc.name)
			continue
		}
		if !strings.Contains(run.Stderr, tc.want) || strings.Contains(run.Stderr, "half-a-secret") {
			t.Errorf("%s: output %q, want it to contain %q and no value", tc.name, run.Stderr, tc.want)
		}
		for _, f := range []string{"pwned", "escaped", "out/pwned"} {
			if _, err := os.Lstat(filepath.Join(run.Dir, f)); err == nil {
				t.Errorf("%s: the generator created %s", tc.name, f)
			}
		}
	}
}

// generatedRepo is a clan repository in which the seed instance's vars
// were generated by running the generators (as TestClanGenerators does).
func generatedRepo(t *testing.T) clanRepo {
	t.Helper()
	pkgs := clanPackages(t, buildVmcredHost(t))
	repo := clanRepo{dir: t.TempDir()}
	repo.generate(t, mustClanExtra(t, clanCase{Directory: repo.dir}), pkgs, nil)
	return repo
}

func mustClanHost(t *testing.T, c clanCase) clanHostEval {
	t.Helper()
	var r clanHostEval
	if err := clanEval(t, c, "", &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// readableByMicrovm: whether a file with this owner, group and mode can
// be read by user microvm with primary group `group` (microvm.nix's
// users.users.microvm) or group kvm.
func readableByMicrovm(f clanFile, group string) bool {
	if len(f.Mode) != 4 {
		return true
	}
	bit := func(i int) bool { return (f.Mode[i]-'0')&4 != 0 }
	return (f.Owner == "microvm" && bit(1)) || ((f.Group == group || f.Group == "kvm") && bit(2)) || bit(3)
}

// TestClanSeedEvaluation evaluates the seed's instance (cloud-hypervisor,
// the five seed credentials, vsock CID 3) on britton-desktop with clan's
// vars module and microvm.nix's host module, after its vars were
// generated, and checks what the host and the VM get.
func TestClanSeedEvaluation(t *testing.T) {
	repo := generatedRepo(t)
	r := mustClanHost(t, clanCase{Directory: repo.dir})
	if len(r.FailedAssertions) > 0 {
		t.Fatalf("failed assertions: %q", r.FailedAssertions)
	}
	vm, ok := r.Vms[clanVM]
	if !ok {
		t.Fatalf("no microvm.vms.%s", clanVM)
	}
	if len(vm.FailedAssertions) > 0 {
		t.Fatalf("the VM's failed assertions: %q", vm.FailedAssertions)
	}
	for _, w := range append(r.Warnings, vm.Warnings...) {
		if strings.Contains(w, "vmcred") {
			t.Errorf("warning: %s", w)
		}
	}

	// One generator with the three secrets, one with the key pair.
	if got := strings.Join(sortedKeys(r.Extra.Generators), " "); got != secretsGen+" "+signingGen {
		t.Fatalf("generators %s", got)
	}
	want := map[string]map[string]bool{ // generator -> file -> secret
		secretsGen: {"API_KEY": true, "DB_PASSWORD": true, "JWT_SECRET": true},
		signingGen: {"signing.key": true, "signing.pub": false},
	}
	for gen, files := range want {
		g := r.Extra.Generators[gen]
		if got := strings.Join(sortedKeys(g.Files), " "); got != strings.Join(sortedKeys(files), " ") {
			t.Errorf("%s files %s", gen, got)
		}
		for name, secret := range files {
			f := g.Files[name]
			if f.Secret != secret || !f.Deploy {
				t.Errorf("%s/%s: secret %v deploy %v", gen, name, f.Secret, f.Deploy)
			}
			// No restartUnits: a changed file is pushed to the running VM
			// (pushOnChange), not delivered by a reboot.
			if secret && (f.Owner != "root" || f.Group != "root" || f.Mode != "0400" || f.NeededFor != "services" ||
				len(f.RestartUnits) != 0) {
				t.Errorf("%s/%s: %s:%s %s neededFor %s restartUnits %v, want root:root 0400 services []",
					gen, name, f.Owner, f.Group, f.Mode, f.NeededFor, f.RestartUnits)
			}
		}
		if g.Share {
			t.Errorf("%s is shared", gen)
		}
	}
	// The five credentials: three secret, two static.
	w := r.Extra.Vmcred[clanVM]
	if got := strings.Join(sortedKeys(w.Credentials), " "); got != "API_KEY DB_PASSWORD JWT_SECRET" {
		t.Errorf("credentials %s", got)
	}
	if w.Static["ENVIRONMENT"] != "test" || w.Static["CLUSTER"] != "britton-desktop" || len(w.Static) != 2 {
		t.Errorf("static %v", w.Static)
	}
	if w.Hypervisor == nil || *w.Hypervisor != "cloud-hypervisor" || vm.Hypervisor != "cloud-hypervisor" {
		t.Errorf("hypervisor %v, VM's %s", w.Hypervisor, vm.Hypervisor)
	}
	if c := r.Extra.VMCids[clanVM]; c == nil || *c != 3 || w.Cid == nil || *w.Cid != 3 {
		t.Errorf("vsock CID: VM %v, channel %v, want 3", c, w.Cid)
	}

	// vmcred-push@test-vm loads exactly these files, at clan's sops paths
	// (cloud-hypervisor itself gets none), and pushes again when one of
	// the secrets changes.
	dropIn, ok := r.Units["vmcred-push@test-vm.service"]
	if !ok {
		t.Fatalf("no vmcred-push@test-vm.service among %v", sortedKeys(r.Units))
	}
	if got := directives(r.Units["microvm@test-vm.service.d/overrides.conf"], "Service", "LoadCredential"); len(got) != 0 {
		t.Errorf("microvm@test-vm loads %q; cloud-hypervisor needs no secret", got)
	}
	base := "/run/secrets/vars/per-machine/" + clanHost + "/"
	wantLoad := []string{
		"API_KEY:" + base + secretsGen + "/API_KEY",
		"DB_PASSWORD:" + base + secretsGen + "/DB_PASSWORD",
		"JWT_SECRET:" + base + secretsGen + "/JWT_SECRET",
		"vmcred.signing-key:" + base + signingGen + "/signing.key",
	}
	got := directives(dropIn, "Service", "LoadCredential")
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(wantLoad, "\n") {
		t.Errorf("LoadCredential= lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantLoad, "\n"))
	}
	if d := directives(dropIn, "Service", "LoadCredential"); strings.Contains(strings.Join(d, " "), "ENVIRONMENT") {
		t.Errorf("a static string is loaded as a credential: %q", d)
	}
	wantPushPath(t, &hostEval{Units: r.Units}, clanVM,
		base+secretsGen+"/API_KEY", base+secretsGen+"/DB_PASSWORD", base+secretsGen+"/JWT_SECRET")

	// Every loaded file is a sops-nix secret the microvm user cannot read.
	group, _ := r.Extra.MicrovmUser["group"].(string)
	if group == "" {
		t.Fatalf("microvm.nix declared no users.users.microvm.group: %v", r.Extra.MicrovmUser)
	}
	for _, l := range got {
		_, path, _ := strings.Cut(l, ":")
		name := strings.TrimPrefix(path, "/run/secrets/")
		s, ok := r.Extra.SopsSecrets[name]
		if !ok {
			t.Errorf("%s is not a sops-nix secret", path)
			continue
		}
		if readableByMicrovm(s, group) {
			t.Errorf("%s: %s:%s %s is readable by user microvm (group %s)", path, s.Owner, s.Group, s.Mode, group)
		}
	}
	if len(r.Extra.SopsSecrets) != len(wantLoad) {
		t.Errorf("sops secrets %v, want the %d loaded files only", sortedKeys(r.Extra.SopsSecrets), len(wantLoad))
	}

	// The guest trusts the generated public key, and runs the agent with it.
	pub := string(repo.read(t, signingGen, "signing.pub"))
	if got := vm.Etc["vmcred/trusted.d/key-1.pub"]; got != pub || len(vm.Etc) != 2 {
		t.Errorf("guest /etc/vmcred %v, want key-1.pub = %q and vm-name", vm.Etc, pub)
	}
	wantAgent(t, clanVM, vm, 730)
	if demo := vm.Units["demo-oem-credentials.service"]; !strings.Contains(demo, "Requires=vmcred-guest.service") {
		t.Errorf("demo-oem-credentials does not require the agent:\n%s", demo)
	}
	_, exec := pushUnit(t, &hostEval{Units: r.Units}, clanVM)
	wantContains(t, "push", exec, "--vm test-vm --connect hybrid:/var/lib/microvms/test-vm/notify.vsock:730 --sign-key %d/vmcred.signing-key ")
}

// The seed's Solution 1 generator, with its group-kvm fix unless fixed
// is false, as a module for the host.
func seedKvmGenerator(withFix bool) string {
	perms := ""
	if withFix {
		perms = `owner = "root"; group = "kvm"; mode = "0440";`
	}
	return `({ pkgs, ... }: { clan.core.vars.generators.test-vm-secrets = {
		files = { "api-key" = { secret = true; ` + perms + ` }; "db-password" = { secret = true; ` + perms + ` }; "jwt-secret" = { secret = true; ` + perms + ` }; };
		runtimeInputs = [ pkgs.openssl ];
		script = "openssl rand -hex 32 > $out/api-key; openssl rand -hex 32 > $out/db-password; openssl rand -hex 32 > $out/jwt-secret";
	}; })`
}

func seedVarCredentials() map[string]any {
	v := func(f string) map[string]any {
		return map[string]any{"var": map[string]any{"generator": "test-vm-secrets", "file": f}}
	}
	return map[string]any{"API_KEY": v("api-key"), "DB_PASSWORD": v("db-password"), "JWT_SECRET": v("jwt-secret")}
}

// TestClanAssertions: every setting the service refuses, and the attacks
// on the files' access rights, each with its message.
func TestClanAssertions(t *testing.T) {
	// With the vars generated: a host whose VM trusts a key that was never
	// generated does not evaluate (clan: "run clan vars generate first").
	dir := generatedRepo(t).dir
	with := func(change func(s map[string]any)) map[string]any {
		s := seedSettings()
		change(s)
		return s
	}
	cred := func(c map[string]any) func(s map[string]any) {
		return func(s map[string]any) { s["credentials"].(map[string]any)["API_KEY"] = c }
	}
	for _, tc := range []struct {
		name     string
		settings map[string]any
		modules  []string
		want     string // in a failed assertion (or the evaluation error)
		warning  bool   // want is a warning, not a failed assertion
	}{
		{name: "group kvm forced on a generated secret",
			modules: []string{`({ lib, ... }: { clan.core.vars.generators.vmcred-test-vm-secrets.files.API_KEY = { group = lib.mkForce "kvm"; mode = lib.mkForce "0440"; }; })`},
			want:    "credential API_KEY (vmcred-test-vm-secrets/API_KEY) is readable by the hypervisor's user (owner root, group kvm, mode 0440)"},
		{name: "group kvm set without force",
			modules: []string{`{ clan.core.vars.generators.vmcred-test-vm-secrets.files.API_KEY.group = "kvm"; }`},
			want:    "has conflicting definition values"},
		{name: "world-readable signing key",
			modules: []string{`({ lib, ... }: { clan.core.vars.generators.vmcred-test-vm-signing.files."signing.key".mode = lib.mkForce "0404"; })`},
			want:    "the signing key (vmcred-test-vm-signing/signing.key) is readable by the hypervisor's user"},
		{name: "secret owned by microvm",
			modules: []string{`({ lib, ... }: { clan.core.vars.generators.vmcred-test-vm-secrets.files.JWT_SECRET.owner = lib.mkForce "microvm"; })`},
			want:    "credential JWT_SECRET (vmcred-test-vm-secrets/JWT_SECRET) is readable by the hypervisor's user (owner microvm"},
		{name: "existing var with the group-kvm fix",
			settings: with(func(s map[string]any) { s["credentials"] = seedVarCredentials() }),
			modules:  []string{seedKvmGenerator(true)},
			want:     "credential API_KEY (test-vm-secrets/api-key) is readable by the hypervisor's user (owner root, group kvm, mode 0440)"},
		{name: "var of a missing generator",
			settings: with(cred(map[string]any{"var": map[string]any{"generator": "nope", "file": "x"}})),
			want:     "credentials.API_KEY.var names nope/x, which is not a clan vars file of this machine"},
		{name: "var of a public file",
			settings: with(cred(map[string]any{"var": map[string]any{"generator": "vmcred-test-vm-signing", "file": "signing.pub"}})),
			want:     "credentials.API_KEY.var: vmcred-test-vm-signing/signing.pub must be a deployed secret"},
		{name: "generate and prompt",
			settings: with(cred(map[string]any{"generate": map[string]any{}, "prompt": map[string]any{}})),
			want:     "credentials.API_KEY must set exactly one of generate, prompt or var (it sets generate and prompt)"},
		{name: "no source",
			settings: with(cred(map[string]any{})),
			want:     "credentials.API_KEY must set exactly one of generate, prompt or var (it sets none)"},
		{name: "alphabet with a repeat",
			settings: with(cred(map[string]any{"generate": map[string]any{"alphabet": "abca"}})),
			want:     "credentials.API_KEY.generate.alphabet holds a character twice"},
		{name: "alphabet with a space",
			settings: with(cred(map[string]any{"generate": map[string]any{"alphabet": "ab c"}})),
			want:     "credentials.API_KEY.generate.alphabet may only hold printable ASCII characters other than space"},
		{name: "alphabet not ASCII",
			settings: with(cred(map[string]any{"generate": map[string]any{"alphabet": "abcé"}})),
			want:     "credentials.API_KEY.generate.alphabet may only hold printable ASCII characters other than space"},
		{name: "alphabet of one",
			settings: with(cred(map[string]any{"generate": map[string]any{"alphabet": "a"}})),
			want:     "credentials.API_KEY.generate.alphabet needs at least two characters"},
		{name: "static string not in the seed's form",
			settings: with(func(s map[string]any) { s["staticOEMStrings"] = []string{"ENVIRONMENT=test"} }),
			want:     "staticOEMStrings entries must look like io.systemd.credential:NAME=VALUE; not: ENVIRONMENT=test"},
		{name: "static string named like a credential",
			settings: with(func(s map[string]any) { s["static"] = map[string]any{"API_KEY": "x"} }),
			want:     "a name is both a credential and a static string"},
		{name: "two credentials in one file",
			settings: with(func(s map[string]any) {
				s["credentials"].(map[string]any)["DB_PASSWORD"] = map[string]any{"generate": map[string]any{}, "fileName": "API_KEY"}
			}),
			want: "two credentials have the same fileName"},
		{name: "VM name with a space",
			settings: with(func(s map[string]any) { s["vmName"] = "test vm" }),
			want:     "vmcred instance test-vm (VM test vm): the VM name must match"},
		{name: "length 0",
			settings: with(cred(map[string]any{"generate": map[string]any{"length": 0}})),
			want:     "is not of type `integer between 1 and 4096"},
		{name: "weak secret",
			settings: with(cred(map[string]any{"generate": map[string]any{"length": 16, "alphabet": "0123456789"}})),
			want:     "credentials.API_KEY gets only 48 bits (length 16, 10 characters)", warning: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r clanHostEval
			err := clanEval(t, clanCase{Directory: dir, Settings: tc.settings, ExtraModules: tc.modules}, "", &r)
			if err != nil {
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("evaluation failed without %q: %v", tc.want, err)
				}
				return
			}
			list := r.FailedAssertions
			if tc.warning {
				list = r.Warnings
			}
			if !anyContains(list, tc.want) {
				t.Errorf("want %q among %q", tc.want, list)
			}
		})
	}
}

// TestClanMigrationFromKvmFix follows nixos-modules/clan/README.md's
// migration: the seed's group-kvm generator undone and named with `var`
// regenerates nothing and loads the old files.
func TestClanMigrationFromKvmFix(t *testing.T) {
	// The repository already holds the old generator's values.
	repo := clanRepo{dir: t.TempDir()}
	for _, f := range []string{"api-key", "db-password", "jwt-secret"} {
		p := filepath.Join(repo.genDir("test-vm-secrets"), f, "secret")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("old-"+f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := seedSettings()
	s["credentials"] = seedVarCredentials()

	// clan vars generate: only the new signing key is made.
	pkgs := clanPackages(t, buildVmcredHost(t))
	e := mustClanExtra(t, clanCase{Directory: repo.dir, Settings: s, ExtraModules: []string{seedKvmGenerator(false)}})
	if ran := repo.generate(t, e, pkgs, nil); strings.Join(ran, " ") != signingGen {
		t.Errorf("clan vars generate ran %v, want only %s", ran, signingGen)
	}

	var before, after clanHostEval
	if err := clanEval(t, clanCase{Directory: repo.dir, Settings: s, ExtraModules: []string{seedKvmGenerator(true)}}, "", &before); err != nil {
		t.Fatal(err)
	}
	if !anyContains(before.FailedAssertions, "is readable by the hypervisor's user") {
		t.Errorf("with the fix still in place: failed assertions %q", before.FailedAssertions)
	}
	if err := clanEval(t, clanCase{Directory: repo.dir, Settings: s, ExtraModules: []string{seedKvmGenerator(false)}}, "", &after); err != nil {
		t.Fatal(err)
	}
	if len(after.FailedAssertions) > 0 {
		t.Fatalf("after undoing the fix: %q", after.FailedAssertions)
	}
	// The service adds no secrets generator (only the signing key); the old
	// generator's files keep clan's defaults.
	if got := strings.Join(sortedKeys(after.Extra.Generators), " "); got != "test-vm-secrets "+signingGen {
		t.Errorf("generators %s, want the old one and %s", got, signingGen)
	}
	old := after.Extra.Generators["test-vm-secrets"]
	for f, info := range old.Files {
		if info.Owner != "root" || info.Group != "root" || info.Mode != "0400" {
			t.Errorf("test-vm-secrets/%s: %s:%s %s", f, info.Owner, info.Group, info.Mode)
		}
	}
	// Regenerate nothing: undoing the fix leaves the old generator's
	// validation as it was, and clan finds all its files.
	if a, b := fmt.Sprint(before.Extra.Generators["test-vm-secrets"].ValidationHash), fmt.Sprint(old.ValidationHash); a != b {
		t.Errorf("test-vm-secrets validation hash changed from %s to %s", a, b)
	}
	if repo.needsGeneration("test-vm-secrets", old) {
		t.Error("clan vars generate would run test-vm-secrets again")
	}
	for c, f := range map[string]string{"API_KEY": "api-key", "DB_PASSWORD": "db-password", "JWT_SECRET": "jwt-secret"} {
		if got, want := after.Extra.Vmcred[clanVM].Credentials[c], "/run/secrets/vars/per-machine/"+clanHost+"/test-vm-secrets/"+f; got != want {
			t.Errorf("%s loads %s, want %s", c, got, want)
		}
	}
}

// TestClanGuestRole evaluates the VM as a clan machine of its own (role
// guest): the agent trusts the public key the host's generator made, read
// from the host's vars with clanLib.getPublicValue; the VM declares no
// generator, so the private key is never deployed to it.
func TestClanGuestRole(t *testing.T) {
	instances := func(hosts ...string) map[string]any {
		s := seedSettings()
		s["configureGuest"] = false
		hm := map[string]any{}
		for _, h := range hosts {
			hm[h] = map[string]any{"settings": s}
		}
		return map[string]any{clanVM: map[string]any{"roles": map[string]any{
			"host":  map[string]any{"machines": hm},
			"guest": map[string]any{"machines": map[string]any{clanVM: map[string]any{"settings": map[string]any{"consumers": []string{"app"}}}}},
		}}}
	}

	// Before the host's vars exist the evaluation stops and says what to do.
	empty := t.TempDir()
	var r clanHostEval
	err := clanEval(t, clanCase{Directory: empty, Machine: clanVM, Instances: instances(clanHost)}, "", &r)
	if err == nil || !strings.Contains(err.Error(), "no public signing key for test-vm yet; run `clan vars generate britton-desktop` first") {
		t.Errorf("without the host's vars: %v", err)
	}

	repo := generatedRepo(t)
	app := `{ systemd.services.app = { wantedBy = [ "multi-user.target" ]; script = "true"; }; }`
	r = mustClanHost(t, clanCase{Directory: repo.dir, Machine: clanVM, Instances: instances(clanHost), ExtraModules: []string{app}})
	if len(r.FailedAssertions) > 0 {
		t.Fatalf("failed assertions: %q", r.FailedAssertions)
	}
	if len(r.Extra.Generators) != 0 || len(r.Extra.SopsSecrets) != 0 {
		t.Errorf("the guest declares generators %v and secrets %v", sortedKeys(r.Extra.Generators), sortedKeys(r.Extra.SopsSecrets))
	}
	pub := string(repo.read(t, signingGen, "signing.pub"))
	if got := r.Etc["vmcred/trusted.d/key-1.pub"]; got != pub {
		t.Errorf("trust key %q, want the host's %q", got, pub)
	}
	exec := strings.Join(directives(r.Units["vmcred-guest.service"], "Service", "ExecStart"), " ")
	for _, want := range []string{"agent --vm-file /etc/vmcred/vm-name --listen vsock::730 ", "--trust-key /etc/vmcred/trusted.d"} {
		if !strings.Contains(exec, want) {
			t.Errorf("vmcred-guest ExecStart %q lacks %q", exec, want)
		}
	}
	// The VM's name as the host's push signs for it.
	if got := r.Etc["vmcred/vm-name"]; got != clanVM+"\n" {
		t.Errorf("vm-name %q, want %q", got, clanVM+"\n")
	}

	// An instance with two hosts cannot say whose key to trust.
	r = mustClanHost(t, clanCase{Directory: repo.dir, Machine: clanVM, Instances: instances(clanHost, "other-host"), ExtraModules: []string{app}})
	if !anyContains(r.FailedAssertions, "the instance needs exactly one machine in roles.host (has 2)") {
		t.Errorf("two hosts: failed assertions %q", r.FailedAssertions)
	}
}

// TestClanExample evaluates examples/test-vm.nix, which declares its clan
// vars generators by hand (no service), with clan's real vars module:
// its generators run, and the host loads their files and the guest trusts
// the generated key.
func TestClanExample(t *testing.T) {
	pkgs := clanPackages(t, buildVmcredHost(t))
	repo := clanRepo{dir: t.TempDir()}
	c := clanCase{Directory: repo.dir, Example: true}
	if ran := repo.generate(t, mustClanExtra(t, c), pkgs, nil); strings.Join(ran, " ") != "test-vm-secrets test-vm-vmcred-signing" {
		t.Fatalf("generate ran %v", ran)
	}
	for f, n := range map[string]int{"api-key": 64, "db-password": 32, "jwt-secret": 64} {
		if v := repo.read(t, "test-vm-secrets", f); len(v) != n {
			t.Errorf("%s: %d bytes, want %d", f, len(v), n)
		}
	}
	r := mustClanHost(t, c)
	if len(r.FailedAssertions) > 0 || len(r.Vms[clanVM].FailedAssertions) > 0 {
		t.Fatalf("failed assertions: %q %q", r.FailedAssertions, r.Vms[clanVM].FailedAssertions)
	}
	base := "/run/secrets/vars/per-machine/" + clanHost + "/"
	got := directives(r.Units["vmcred-push@test-vm.service"], "Service", "LoadCredential")
	sort.Strings(got)
	want := []string{
		"API_KEY:" + base + "test-vm-secrets/api-key",
		"DB_PASSWORD:" + base + "test-vm-secrets/db-password",
		"JWT_SECRET:" + base + "test-vm-secrets/jwt-secret",
		"vmcred.signing-key:" + base + "test-vm-vmcred-signing/signing.key",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("LoadCredential= %q, want %q", got, want)
	}
	if key := r.Vms[clanVM].Etc["vmcred/trusted.d/key-1.pub"]; key != string(repo.read(t, "test-vm-vmcred-signing", "signing.pub")) {
		t.Errorf("guest trust key %q is not the generated one", key)
	}
	for name, s := range r.Extra.SopsSecrets {
		if s.Owner != "root" || s.Group != "root" || s.Mode != "0400" {
			t.Errorf("%s: %s:%s %s", name, s.Owner, s.Group, s.Mode)
		}
	}
}

// TestClanHypervisors: the service's hypervisor setting gives a VM declared
// on the host the matching microvm.nix configuration (QEMU's machine type
// included), which host.nix checks against its own.
func TestClanHypervisors(t *testing.T) {
	repo := generatedRepo(t)
	for _, tc := range []struct{ hypervisor, vmHypervisor, machine, connect string }{
		{"qemu", "qemu", "q35", "--connect vsock:3:730 "},
		{"qemu-microvm", "qemu", "microvm", "--connect vsock:3:730 "},
		{"firecracker", "firecracker", "", "--connect hybrid:/var/lib/microvms/test-vm/notify.vsock:730 "},
	} {
		s := seedSettings()
		s["hypervisor"] = tc.hypervisor
		r := mustClanHost(t, clanCase{Directory: repo.dir, Settings: s})
		vm := r.Vms[clanVM]
		if len(r.FailedAssertions)+len(vm.FailedAssertions) > 0 {
			t.Errorf("%s: failed assertions %q %q", tc.hypervisor, r.FailedAssertions, vm.FailedAssertions)
			continue
		}
		if vm.Hypervisor != tc.vmHypervisor || (tc.machine != "" && vm.QemuMachine != tc.machine) {
			t.Errorf("%s: the VM is %s (machine %s)", tc.hypervisor, vm.Hypervisor, vm.QemuMachine)
		}
		qemu := tc.vmHypervisor == "qemu"
		if qemu && (vm.ExtraArgsScriptText == nil || !strings.Contains(*vm.ExtraArgsScriptText, "--hypervisor "+tc.hypervisor+" ")) {
			t.Errorf("%s: extraArgsScript %v", tc.hypervisor, vm.ExtraArgsScriptText)
		}
		if !qemu && vm.ExtraArgsScript != nil {
			t.Errorf("%s: extraArgsScript %q, want none", tc.hypervisor, *vm.ExtraArgsScript)
		}
		wantLoad := 0
		if qemu {
			wantLoad = 4 // firmware: pack reads them in microvm@
		}
		if got := directives(r.Units["microvm@test-vm.service.d/overrides.conf"], "Service", "LoadCredential"); len(got) != wantLoad {
			t.Errorf("%s: microvm@ LoadCredential= %q, want %d lines", tc.hypervisor, got, wantLoad)
		}
		if got := directives(r.Units["vmcred-push@test-vm.service"], "Service", "LoadCredential"); len(got) != 4 {
			t.Errorf("%s: push LoadCredential= %q", tc.hypervisor, got)
		}
		_, exec := pushUnit(t, &hostEval{Units: r.Units}, clanVM)
		wantContains(t, tc.hypervisor+" push", exec, tc.connect)
	}
}
