package integration

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmcred/vmcred/integration/testenv"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/smbios"
)

// Needle classes: where a needle may legitimately be found.
const (
	classSecret = iota // a credential value: sources, payloads, DMI tables, the credstore
	classDigest        // a SHA-256 of a value: payloads, DMI tables and the guest's root-only status folder
	classStrict        // never outside its own file: an unselected source, a typo'd literal, a signing key
	numClasses
)

// File kinds the hunt exempts from some needle classes. Each but the
// test's own copies must be mode 0400.
const (
	kindSource    = "source file"
	kindKey       = "signing key"
	kindPayload   = "runtime payload file"
	kindDMI       = "DMI table written by pack"
	kindCredstore = "credstore file"
	kindTestCopy  = "test-made table copy"
	kindBinary    = "binary copy"
	// kindGuestStatus is the agent's status folder (status.json, the
	// session's manifest): names and digests, root-only in a VM (mode
	// 0600 in a 0700 folder).
	kindGuestStatus = "guest status file"
)

// kindSkips says which needle classes a file kind may hold.
var kindSkips = map[string][numClasses]bool{
	kindSource:      {classSecret: true, classStrict: true},
	kindKey:         {classSecret: true, classStrict: true},
	kindPayload:     {classSecret: true, classDigest: true},
	kindDMI:         {classSecret: true, classDigest: true},
	kindTestCopy:    {classSecret: true, classDigest: true},
	kindCredstore:   {classSecret: true},
	kindBinary:      {classSecret: true, classDigest: true, classStrict: true},
	kindGuestStatus: {classDigest: true},
}

// hunt is the leak hunt's state: the canaries, the exempt files, and the
// places scanned.
type hunt struct {
	base, shm string
	env       []string
	notify    *notifySink
	notified  int

	needles  [numClasses][]needle
	values   map[string][]byte // delivered credential name -> value
	files    map[string]string // exempt file -> kind
	dirs     map[string]string // runtime or credstore dir -> kind of its files
	scanned  map[string]bool   // file versions already scanned
	reported map[string]bool   // leaks already reported
	runs     int
	places   int
}

func (h *hunt) add(class int, kind, name string, v []byte) {
	h.needles[class] = append(h.needles[class], secretNeedles(kind, name, v)...)
}

func (h *hunt) all() []needle {
	var all []needle
	for _, ns := range h.needles {
		all = append(all, ns...)
	}
	return all
}

// runOpts are a run's extras.
type runOpts struct {
	env     []string
	cred    *syscall.Credential
	timeout time.Duration
	// argvMay lists needle labels' prefixes allowed in the argv of the
	// started process itself (a literal the test put there on purpose).
	argvMay []string
	// reveal is the credential whose value is expected, exactly, as the
	// whole stdout.
	reveal string
	// digestsMay allows SHA-256 digests on stdout: the guest's debug
	// views print them to root inside the VM (DESIGN §7, list --json).
	digestsMay bool
}

func (h *hunt) envWith(extra []string) []string {
	return append(slices.Clone(h.env), extra...)
}

// run runs bin to completion and hunts in everything it left.
func (h *hunt) run(t *testing.T, label string, o runOpts, bin string, args ...string) (int, string, string) {
	t.Helper()
	p := h.start(t, label, o, bin, args...)
	return h.finish(t, p, o)
}

func (h *hunt) start(t *testing.T, label string, o runOpts, bin string, args ...string) *watchedProc {
	t.Helper()
	return startProc(t, label, h.envWith(o.env), o.cred, bin, args...)
}

// finish waits for p and scans its output, the argv and environment of
// it and its children as sampled, new sd_notify messages and every file.
func (h *hunt) finish(t *testing.T, p *watchedProc, o runOpts) (int, string, string) {
	t.Helper()
	timeout := o.timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	code := p.wait(t, timeout)
	h.runs++
	all := h.all()
	stdout, stderr := p.stdout.Bytes(), p.stderr.Bytes()
	if o.reveal != "" {
		want := h.values[o.reveal]
		if !bytes.Equal(stdout, want) {
			t.Errorf("stdout of %s is %d bytes, not exactly the %d-byte value of %q", p.label, len(stdout), len(want), o.reveal)
		}
		label := fmt.Sprintf(" %q ", o.reveal)
		h.scanBytes(t, "stdout of "+p.label, stdout, slices.DeleteFunc(slices.Clone(all), func(n needle) bool {
			return !strings.HasPrefix(n.what, "SHA-256") && strings.Contains(n.what, label)
		}))
	} else if o.digestsMay {
		h.scanBytes(t, "stdout of "+p.label, stdout, slices.DeleteFunc(slices.Clone(all), func(n needle) bool { return strings.HasPrefix(n.what, "SHA-256") }))
	} else {
		h.scanBytes(t, "stdout of "+p.label, stdout, all)
	}
	h.scanBytes(t, "stderr of "+p.label, stderr, all)
	snaps, _ := p.watch.finish()
	root := p.cmd.Process.Pid
	for place, contents := range snaps {
		for _, c := range contents {
			hits := leakHits(c, all)
			if strings.HasPrefix(place, fmt.Sprintf("argv of pid %d ", root)) {
				hits = slices.DeleteFunc(hits, func(hit string) bool {
					return slices.ContainsFunc(o.argvMay, func(p string) bool { return strings.HasPrefix(hit, p) })
				})
			}
			h.places++
			for _, hit := range hits {
				t.Errorf("LEAK: %s found in %s, a child of %s", hit, place, p.label)
			}
		}
	}
	for i, m := range h.notify.messages(h.notified) {
		h.scanBytes(t, fmt.Sprintf("sd_notify message %d (after %s)", h.notified+i, p.label), m, all)
	}
	h.notified = h.notify.count()
	h.scanTree(t)
	outNeedles := all
	if o.digestsMay {
		outNeedles = slices.DeleteFunc(slices.Clone(all), func(n needle) bool { return strings.HasPrefix(n.what, "SHA-256") })
	}
	return code, redact(string(stdout), outNeedles), redact(string(stderr), all)
}

func (h *hunt) scanBytes(t *testing.T, place string, data []byte, ns []needle) {
	t.Helper()
	h.places++
	for _, hit := range leakHits(data, ns) {
		t.Errorf("LEAK: %s found in %s", hit, place)
	}
}

// kindOf is the exemption of a file, "" for none.
func (h *hunt) kindOf(path string) string {
	if k, ok := h.files[path]; ok {
		return k
	}
	dir := filepath.Dir(path)
	dir = filepath.Clean(dir)
	if k := h.dirs[dir]; k != "" {
		return k
	}
	// pack without --runtime-dir makes a private one in $TMPDIR.
	if filepath.Dir(dir) == filepath.Join(h.base, "tmp") && strings.HasPrefix(filepath.Base(dir), "vmcred-") {
		h.dirs[dir] = kindPayload
		return kindPayload
	}
	return ""
}

// scanTree reads every regular file under the test's folders (each
// version once) and checks the exempt ones' modes.
func (h *hunt) scanTree(t *testing.T) {
	t.Helper()
	for _, root := range []string{h.base, h.shm} {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // removed meanwhile
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if d.IsDir() {
				if k := h.dirs[path]; k != "" {
					if k == kindGuestStatus && info.Mode().Perm()&0o077 == 0 {
						return nil
					}
					h.once(t, "mode:"+path+info.Mode().String(), info.Mode().Perm() != 0o700,
						"%s (a folder of %ss) has mode %04o, want 0700", path, k, info.Mode().Perm())
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			kind := h.kindOf(path)
			if kind == kindGuestStatus {
				h.once(t, "mode:"+path+info.Mode().String(), info.Mode().Perm()&0o077 != 0,
					"%s (a %s) has mode %04o, want no access for group or others", path, kind, info.Mode().Perm())
			} else if kind != "" && kind != kindTestCopy && kind != kindBinary {
				h.once(t, "mode:"+path+info.Mode().String(), info.Mode().Perm() != 0o400,
					"%s (a %s) has mode %04o, want 0400", path, kind, info.Mode().Perm())
			}
			key := fmt.Sprintf("%s|%d|%d|%v", path, info.Size(), info.ModTime().UnixNano(), info.Mode())
			if h.scanned[key] {
				return nil
			}
			h.scanned[key] = true
			var ns []needle
			for c := range numClasses {
				if !kindSkips[kind][c] {
					ns = append(ns, h.needles[c]...)
				}
			}
			if len(ns) == 0 {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return nil
			}
			data, _ := io.ReadAll(io.LimitReader(f, 64<<20))
			f.Close()
			h.places++
			for _, hit := range leakHits(data, ns) {
				h.once(t, "leak:"+path+hit, true, "LEAK: %s found in file %s", hit, path)
			}
			return nil
		})
	}
}

func (h *hunt) once(t *testing.T, key string, bad bool, format string, args ...any) {
	t.Helper()
	if bad && !h.reported[key] {
		h.reported[key] = true
		t.Errorf(format, args...)
	}
}

// writeSecret writes a 0400 source file and registers its value.
func (h *hunt) writeSecret(t *testing.T, class int, path string, v []byte) {
	t.Helper()
	if err := os.WriteFile(path, v, 0o400); err != nil {
		t.Fatal(err)
	}
	h.files[path] = kindSource
	h.add(class, "credential", filepath.Base(path), v)
	if class == classSecret {
		h.needles[classDigest] = append(h.needles[classDigest], digestEncodings("credential", filepath.Base(path), v)...)
	}
}

// TestLeakHunt runs every command of both binaries (the guest's as its
// --help lists them at run time) on success and failure paths with random
// canary secrets, and searches each run's stdout, stderr, sd_notify
// messages, the argv and environment of the command and its children
// (sampled from /proc while they run) and every file under the test's
// folders for every credential value, its SHA-256 and the signing key,
// raw and as hex and base64 (any alignment, both alphabets, and the base64
// of the whole OEM string). Only the sources, the 0400 payload files, the
// DMI tables pack wrote and the credstore (0400 files in a 0700 folder)
// may hold values; digests only payloads, tables and the guest's
// root-only status folder. There is no channel token any more: the host
// dials the agent (DESIGN §8).
func TestLeakHunt(t *testing.T) {
	base, err := os.MkdirTemp("", "vc-lh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	shm, err := os.MkdirTemp("/dev/shm", "vc-lh-")
	if err != nil {
		testenv.SkipOrFail(t, "no writable /dev/shm tmpfs for the credstore (the agent needs tmpfs): %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	h := &hunt{base: base, shm: shm, values: map[string][]byte{}, files: map[string]string{}, dirs: map[string]string{}, scanned: map[string]bool{}, reported: map[string]bool{}}
	p := func(parts ...string) string { return filepath.Join(append([]string{base}, parts...)...) }
	for _, d := range []string{"secrets", "clan", "creds", "keys", "home", "tmp", "tables", "host-status", "empty"} {
		if err := os.Mkdir(p(d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	h.notify = newNotifySink(t, p("notify.sock"))
	h.env = []string{"PATH=/usr/bin:/bin", "HOME=" + p("home"), "TMPDIR=" + p("tmp"), "NOTIFY_SOCKET=" + p("notify.sock")}

	// The canaries.
	delivered := map[string][]byte{
		"api-key":     randomText(),
		"db-password": randomBytes(48),
		"big-blob":    randomBytes(100 << 10), // too big for SMBIOS: goes by channel
	}
	clan := map[string][]byte{"jwt-secret": randomText(), "tls-key": randomBytes(64)}
	creds := map[string][]byte{"cd-token": randomText()}
	for name, v := range delivered {
		h.writeSecret(t, classSecret, p("secrets", name), v)
		h.values[name] = v
	}
	for name, v := range clan {
		h.writeSecret(t, classSecret, p("clan", name), v)
		h.values[name] = v
	}
	for name, v := range creds {
		h.writeSecret(t, classSecret, p("creds", name), v)
		h.values[name] = v
	}
	// In $CREDENTIALS_DIRECTORY but not selected: must never leave its file.
	h.writeSecret(t, classStrict, p("creds", "cd-unselected"), randomText())
	// Over systemd's 1 MiB: refused, so it never leaves its file either.
	h.writeSecret(t, classStrict, p("secrets", "huge"), randomBytes(2<<20))
	typo := randomText()
	h.add(classStrict, "typo'd literal", "for api-key", typo)
	// A base64 secret pasted whole, padding and all, where NAME=file:PATH
	// belongs.
	pasted := []byte(base64.StdEncoding.EncodeToString(randomBytes(22)))
	h.add(classStrict, "typo'd literal", "pasted base64", pasted)
	credsEnv := []string{"CREDENTIALS_DIRECTORY=" + p("creds")}
	statics := []string{"--static", "ENVIRONMENT=test", "--static", "CLUSTER=leakhunt"}
	sources := append([]string{
		"--cred", "api-key=file:" + p("secrets", "api-key"),
		"--cred", "db-password=file:" + p("secrets", "db-password"),
		"--cred", "big-blob=file:" + p("secrets", "big-blob"),
		"--cred-dir", p("clan"),
		"--from-credentials-directory=cd-token",
	}, statics...)
	small := append([]string{
		"--cred", "api-key=file:" + p("secrets", "api-key"),
		"--cred", "db-password=file:" + p("secrets", "db-password"),
		"--cred-dir", p("clan"),
	}, statics...)
	host, guest := built.host, built.guest

	t.Run("host/keygen", func(t *testing.T) {
		for _, k := range []string{"k", "other"} {
			if code, _, stderr := h.run(t, "vmcred-host keygen "+k, runOpts{}, host, "keygen", "--out", p("keys", k)); code != 0 {
				t.Fatalf("keygen: exit %d: %s", code, stderr)
			}
			h.files[p("keys", k+".key")] = kindKey
			b, err := os.ReadFile(p("keys", k+".key"))
			if err != nil {
				t.Fatal(err)
			}
			key, err := manifest.ParsePrivateKey(b)
			if err != nil {
				t.Fatal(err)
			}
			h.add(classStrict, "signing key", k+".key", key.Seed())
			if pub, err := os.ReadFile(p("keys", k+".pub")); err != nil {
				t.Fatal(err)
			} else if got, err := manifest.ParsePublicKey(pub); err != nil || !got.Equal(key.Public().(ed25519.PublicKey)) {
				t.Fatalf("keygen %s: the public key does not match the private one (%v)", k, err)
			}
		}
		// Failures: an existing key is not overwritten; a missing folder.
		if code, _, _ := h.run(t, "vmcred-host keygen (existing)", runOpts{}, host, "keygen", "--out", p("keys", "k")); code == 0 {
			t.Errorf("keygen over an existing key: exit 0")
		}
		// A missing folder is made; one that cannot be (a file on the way) fails.
		if code, _, _ := h.run(t, "vmcred-host keygen (folder is a file)", runOpts{}, host, "keygen", "--out", p("keys", "k.pub", "k")); code == 0 {
			t.Errorf("keygen under a file: exit 0")
		}
	})

	tableA, tableB := p("tables", "a.dmi"), p("tables", "b.dmi")
	agentDir := p("agent")
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(agentDir, "agent.sock")
	pack := func(t *testing.T, label string, o runOpts, wantCode int, args ...string) (string, string) {
		t.Helper()
		code, stdout, stderr := h.run(t, "vmcred-host pack ("+label+")", o, host, append([]string{"pack"}, args...)...)
		if code != wantCode {
			t.Errorf("pack (%s): exit %d, want %d: %s", label, code, wantCode, stderr)
		}
		return stdout, stderr
	}
	rt := func(name string) string {
		h.dirs[p(name)] = kindPayload
		return p(name)
	}

	t.Run("host/pack", func(t *testing.T) {
		common := []string{"--vm", "demo", "--sign-key", p("keys", "k.key")}
		chanArgs := []string{"--overflow", "channel"}
		h.files[tableA] = kindDMI
		pack(t, "dmi, signed, overflow to the session", runOpts{env: credsEnv}, 0,
			slices.Concat(common, []string{"--hypervisor", "dmi", "--out", tableA, "--runtime-dir", rt("rt-a")}, chanArgs, sources)...)
		// Table B: another VM's.
		h.files[tableB] = kindDMI
		pack(t, "dmi, signed, another vm", runOpts{env: credsEnv}, 0,
			slices.Concat([]string{"--vm", "other", "--sign-key", p("keys", "k.key")}, []string{"--hypervisor", "dmi", "--out", tableB, "--runtime-dir", rt("rt-b")}, small)...)
		if tab, err := os.ReadFile(tableA); err != nil || bytes.Contains(tab, h.values["big-blob"][:32]) {
			t.Errorf("table A holds big-blob, which goes in the session (%v)", err)
		}

		out, _ := pack(t, "qemu", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "qemu", "--runtime-dir", rt("rt-q")}, small)...)
		if !strings.Contains(out, "type=11,path="+p("rt-q")) {
			t.Errorf("pack qemu printed no -smbios path= argument")
		}
		out, _ = pack(t, "qemu --inline, overflow", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "qemu", "--inline", "--runtime-dir", rt("rt-qi")}, chanArgs, sources)...)
		if !strings.Contains(out, "value=") {
			t.Errorf("pack qemu --inline put no string on the command line")
		}
		pack(t, "qemu --print0 --mode systemd", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "qemu", "--print0", "--mode", "systemd", "--runtime-dir", rt("rt-q0")}, small)...)
		pack(t, "qemu-microvm", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "qemu-microvm", "--runtime-dir", rt("rt-m")}, small)...)
		out, _ = pack(t, "cloud-hypervisor", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "cloud-hypervisor", "--runtime-dir", rt("rt-ch")}, chanArgs, sources)...)
		if !strings.Contains(out, "oem_strings=") || strings.Contains(out, "vmcred.manifest") {
			t.Errorf("pack cloud-hypervisor: want oem_strings with the static strings and no manifest (it holds digests)")
		}
		if err := os.WriteFile(p("ch-config.json"), []byte(`{"payload":{"kernel":"/k"}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		pack(t, "cloud-hypervisor --ch-api", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "cloud-hypervisor", "--ch-api", p("ch-api.sock"), "--ch-config", p("ch-config.json"), "--runtime-dir", rt("rt-chapi")}, small)...)
		// Firecracker: no arguments and no file: the session brings it all.
		out, _ = pack(t, "firecracker", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "firecracker", "--runtime-dir", rt("rt-fc")}, chanArgs, sources)...)
		if out != "" {
			t.Errorf("pack firecracker printed %d bytes of arguments, want none", len(out))
		}
		out, _ = pack(t, "json", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "json", "--runtime-dir", rt("rt-j")}, chanArgs, sources)...)
		if !json.Valid([]byte(out)) {
			t.Errorf("pack json printed no JSON")
		}
		// The JSON plan describes the payload files; it writes none.
		if _, err := os.Stat(p("rt-j")); !os.IsNotExist(err) {
			t.Errorf("pack json made its runtime folder: %v", err)
		}
		pack(t, "json --out", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "json", "--target", "qemu-microvm", "--out", p("plan.json"), "--runtime-dir", rt("rt-j2")}, small)...)
		if b, err := os.ReadFile(p("plan.json")); err != nil || !json.Valid(b) {
			t.Errorf("pack json --out wrote no JSON plan (%v)", err)
		}
		if fi, err := os.Stat(p("plan.json")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("pack json --out: plan mode %v (%v), want 0600", fi.Mode(), err)
		}
		pack(t, "qemu, $TMPDIR", runOpts{env: credsEnv}, 0, slices.Concat(common, []string{"--hypervisor", "qemu"}, small)...)
		if m, _ := filepath.Glob(p("tmp", "vmcred-*")); len(m) != 1 {
			t.Errorf("pack without --runtime-dir: %d private folders in $TMPDIR, want 1", len(m))
		}
		pack(t, "qemu, $RUNTIME_DIRECTORY", runOpts{env: append([]string{"RUNTIME_DIRECTORY=" + rt("rt-env")}, credsEnv...)}, 0, slices.Concat(common, []string{"--hypervisor", "qemu"}, small)...)

		// Failures.
		if err := syscall.Mkfifo(p("secrets", "fifo"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			label string
			code  int
			args  []string
			o     runOpts
		}{
			{"missing source", 3, []string{"--cred", "gone=file:" + p("secrets", "gone")}, runOpts{}},
			{"source is a folder", 3, []string{"--cred", "dir=file:" + p("clan")}, runOpts{}},
			{"source is a FIFO", 3, []string{"--cred", "fifo=file:" + p("secrets", "fifo")}, runOpts{timeout: 10 * time.Second}},
			{"over-size credential", 1, []string{"--cred", "huge=file:" + p("secrets", "huge")}, runOpts{}},
			{"literal --cred", 2, []string{"--cred", "api-key=" + string(typo)}, runOpts{argvMay: []string{"typo'd literal"}}},
			{"literal --cred with a bad scheme", 2, []string{"--cred", "api-key=fiel:" + string(typo)}, runOpts{argvMay: []string{"typo'd literal"}}},
			{"--cred without NAME=", 2, []string{"--cred", string(typo)}, runOpts{argvMay: []string{"typo'd literal"}}},
			{"--cred with a pasted base64 secret", 2, []string{"--cred", string(pasted)}, runOpts{argvMay: []string{"typo'd literal"}}},
			{"stray argument", 2, []string{string(typo)}, runOpts{argvMay: []string{"typo'd literal"}}},
			{"secret file as --sign-key", 2, []string{"--sign-key", p("secrets", "api-key")}, runOpts{}},
			{"unselected from $CREDENTIALS_DIRECTORY, missing name", 3, []string{"--from-credentials-directory=cd-missing"}, runOpts{env: credsEnv}},
		} {
			args := slices.Concat([]string{"--vm", "demo", "--hypervisor", "qemu", "--runtime-dir", rt("rt-fail")}, small, c.args)
			stdout, stderr := pack(t, c.label, c.o, c.code, args...)
			if strings.TrimSpace(stderr) == "" {
				t.Errorf("pack (%s) failed silently", c.label)
			}
			if stdout != "" {
				t.Errorf("pack (%s) printed arguments on failure", c.label)
			}
			if ents, _ := os.ReadDir(p("rt-fail")); len(ents) > 0 {
				t.Errorf("pack (%s) failed and left %d file(s) in its runtime folder", c.label, len(ents))
			}
		}
		// An unsafe runtime folder is refused and gets nothing.
		if err := os.Mkdir(p("rt-unsafe"), 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p("rt-unsafe"), 0o777)
		pack(t, "group-writable runtime dir", runOpts{}, 3, slices.Concat([]string{"--vm", "demo", "--hypervisor", "qemu", "--runtime-dir", p("rt-unsafe")}, small)...)
		if ents, _ := os.ReadDir(p("rt-unsafe")); len(ents) > 0 {
			t.Errorf("pack wrote %d file(s) into a group-writable runtime folder", len(ents))
		}
		// A DMI table that cannot be written.
		pack(t, "dmi --out in a missing folder", runOpts{}, 3, slices.Concat([]string{"--vm", "demo", "--hypervisor", "dmi", "--out", p("nowhere", "x.dmi")}, small)...)

		// Unreadable: as root, run pack as nobody on a root-only file.
		if os.Geteuid() != 0 {
			os.Chmod(p("secrets", "api-key"), 0)
			defer os.Chmod(p("secrets", "api-key"), 0o400)
			pack(t, "unreadable source", runOpts{}, 3, "--vm", "demo", "--hypervisor", "dmi", "--out", p("tables", "x.dmi"), "--cred", "api-key=file:"+p("secrets", "api-key"))
			return
		}
		nb := p("nobody")
		if err := os.Mkdir(nb, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(base, 0o711)
		os.Chmod(nb, 0o755)
		bin, err := os.ReadFile(host)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(nb, "vmcred-host"), bin, 0o755); err != nil {
			t.Fatal(err)
		}
		h.files[filepath.Join(nb, "vmcred-host")] = kindBinary
		h.writeSecret(t, classStrict, filepath.Join(nb, "root-only"), randomText())
		code, _, stderr := h.run(t, "vmcred-host pack (unreadable source, as nobody)", runOpts{cred: &syscall.Credential{Uid: 65534, Gid: 65534}},
			filepath.Join(nb, "vmcred-host"), "pack", "--vm", "demo", "--hypervisor", "qemu", "--runtime-dir", filepath.Join(nb, "rt"), "--cred", "x=file:"+filepath.Join(nb, "root-only"))
		if code != 3 || !strings.Contains(stderr, "permission denied") {
			t.Errorf("pack of an unreadable source: exit %d, want 3 with permission denied: %s", code, stderr)
		}
	})

	t.Run("host/check", func(t *testing.T) {
		for _, c := range []struct {
			label string
			code  int
			args  []string
			o     runOpts
		}{
			{"readable", 0, slices.Concat([]string{"--as-user", "root"}, sources), runOpts{env: credsEnv}},
			{"readable, json", 0, slices.Concat([]string{"--as-user", "root", "--json"}, sources), runOpts{env: credsEnv}},
			{"denied", 3, slices.Concat([]string{"--as-user", "nobody", "--vm", "demo"}, sources), runOpts{env: credsEnv}},
			{"denied, json", 3, slices.Concat([]string{"--as-user", "nobody", "--json"}, sources), runOpts{env: credsEnv}},
			{"FIFO", 3, []string{"--as-user", "root", "--cred", "fifo=file:" + p("secrets", "fifo")}, runOpts{timeout: 10 * time.Second}},
			{"literal --cred", 2, []string{"--cred", "api-key=" + string(typo)}, runOpts{argvMay: []string{"typo'd literal"}}},
			{"pasted base64 secret", 2, []string{"--cred", string(pasted)}, runOpts{argvMay: []string{"typo'd literal"}}},
		} {
			code, stdout, stderr := h.run(t, "vmcred-host check ("+c.label+")", c.o, host, append([]string{"check"}, c.args...)...)
			if code != c.code {
				t.Errorf("check (%s): exit %d, want %d: %s", c.label, code, c.code, stderr)
			}
			if strings.Contains(c.label, "json") && !json.Valid([]byte(stdout)) {
				t.Errorf("check (%s): stdout is not JSON", c.label)
			}
		}
	})

	store := filepath.Join(shm, "store")
	h.dirs[store] = kindCredstore
	gst := func(name string) string {
		h.dirs[p("gst-"+name)] = kindGuestStatus
		return p("gst-" + name)
	}
	storeFC := filepath.Join(shm, "store-fc")
	h.dirs[storeFC] = kindCredstore
	tampered := p("tables", "a-tampered.dmi")
	var guestLoad func(table, status, trust string, extra ...string) []string
	guestBase := func(table, status string, extra ...string) []string {
		return guestLoad(table, status, p("keys", "k.pub"), extra...)
	}
	guestLoad = func(table, status, trust string, extra ...string) []string {
		return slices.Concat([]string{"load", "--dmi-table", table, "--trust-key", trust, "--vm", "demo",
			"--credstore", store, "--status-dir", status, "--system-credentials", ""}, extra)
	}

	t.Run("session/agent-push-wait", func(t *testing.T) {
		tab, err := os.ReadFile(tableA)
		if err != nil {
			t.Fatal(err)
		}
		// The tampered copy: one base64 character of api-key's string
		// changed, still valid base64, so only its digest is wrong.
		i := bytes.Index(tab, []byte(oemVmcred+"api-key="))
		if i < 0 {
			t.Fatal("table A has no api-key string")
		}
		at := i + len(oemVmcred+"api-key=") + 4
		if tab[at] == 'A' {
			tab[at] = 'B'
		} else {
			tab[at] = 'A'
		}
		if err := os.WriteFile(tampered, tab, 0o400); err != nil {
			t.Fatal(err)
		}
		h.files[tampered] = kindTestCopy

		agentOpts := runOpts{timeout: 30 * time.Second}
		agentArgs := func(sock, table, status, store string) []string {
			return []string{"agent", "--listen", "unix:" + sock, "--dmi-table", table, "--trust-key", p("keys", "k.pub"), "--vm", "demo",
				"--credstore", store, "--status-dir", status, "--system-credentials", ""}
		}
		agent := h.start(t, "vmcred-guest agent", agentOpts, guest, agentArgs(sock, tableA, gst("good"), store)...)
		waitForSocket(t, sock)
		wait := h.start(t, "vmcred-host wait (ready)", runOpts{}, host, "wait", "--vm", "demo", "--status-dir", p("host-status"), "--timeout", "20s")
		pushArgs := func(vm, key string) []string {
			return slices.Concat([]string{"push", "--vm", vm, "--connect", "unix:" + sock, "--sign-key", key, "--status-dir", p("host-status"), "--timeout", "10s"}, sources)
		}
		code, _, stderr := h.run(t, "vmcred-host push (good)", runOpts{env: credsEnv}, host, pushArgs("demo", p("keys", "k.key"))...)
		if code != 0 {
			t.Fatalf("push: exit %d: %s", code, stderr)
		}
		for name, v := range h.values {
			if got, err := os.ReadFile(filepath.Join(store, name)); err != nil || !bytes.Equal(got, v) {
				t.Errorf("credstore %s: %d bytes, not the %d bytes pushed (%v)", name, len(got), len(v), err)
			}
		}
		for _, name := range []string{"cd-unselected", "huge"} {
			if _, err := os.Stat(filepath.Join(store, name)); err == nil {
				t.Errorf("credstore holds %s, which was never sent", name)
			}
		}
		if code, _, stderr := h.finish(t, wait, runOpts{}); code != 0 {
			t.Errorf("wait: exit %d, want 0: %s", code, stderr)
		}
		for _, f := range []string{filepath.Join(gst("good"), "status.json"), filepath.Join(gst("good"), "manifest"), p("host-status", "demo.json")} {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("no status file: %v", err)
			}
		}
		ready := false
		for _, m := range h.notify.messages(0) {
			ready = ready || bytes.Contains(m, []byte("READY=1"))
		}
		if !ready {
			t.Errorf("no READY=1 reached NOTIFY_SOCKET")
		}

		// Sessions the agent refuses: nothing written.
		for _, c := range []struct {
			label string
			args  []string
		}{
			{"another key", pushArgs("demo", p("keys", "other.key"))},
			{"another vm", pushArgs("other", p("keys", "k.key"))},
		} {
			before := storeDigests(t, store)
			if code, _, stderr := h.run(t, "vmcred-host push ("+c.label+")", runOpts{env: credsEnv}, host, c.args...); code != 1 {
				t.Errorf("push (%s): exit %d, want 1: %s", c.label, code, stderr)
			}
			if after := storeDigests(t, store); !equalMaps(before, after) {
				t.Errorf("push (%s) was refused but changed the credstore", c.label)
			}
		}
		// The refused session is what the host recorded: wait says failed.
		if code, _, stderr := h.run(t, "vmcred-host wait (failed)", runOpts{}, host, "wait", "--vm", "other", "--status-dir", p("host-status"), "--timeout", "5s"); code != 1 {
			t.Errorf("wait after a refused session: exit %d, want 1: %s", code, stderr)
		}

		// Loads from firmware alone that fail: nothing written.
		for _, c := range []struct {
			label string
			code  int
			args  []string
			o     runOpts
		}{
			{"needs the session", 1, guestBase(tableA, gst("firmware-only")), runOpts{}},
			{"another vm's table", 1, guestBase(tableB, gst("other-vm")), runOpts{}},
			{"tampered table", 1, guestBase(tampered, gst("tampered")), runOpts{}},
			{"wrong trust key", 1, guestLoad(tableA, gst("wrong-key"), p("keys", "other.pub")), runOpts{}},
			{"private key as trust key", 2, guestLoad(tableA, gst("private-key"), p("keys", "k.key")), runOpts{}},
			{"secret file as trust key", 2, guestLoad(tableA, gst("secret-key"), p("secrets", "api-key")), runOpts{}},
			{"stray argument", 2, append(guestBase(tableA, gst("stray")), string(typo)), runOpts{argvMay: []string{"typo'd literal"}}},
		} {
			before := storeDigests(t, store)
			code, _, stderr := h.run(t, "vmcred-guest load ("+c.label+")", c.o, guest, c.args...)
			if code != c.code {
				t.Errorf("load (%s): exit %d, want %d: %s", c.label, code, c.code, stderr)
			}
			if after := storeDigests(t, store); !equalMaps(before, after) {
				t.Errorf("load (%s) failed but changed the credstore", c.label)
			}
		}
		if code, _, _ := h.run(t, "vmcred-host wait (timeout)", runOpts{}, host, "wait", "--vm", "nobody", "--status-dir", p("host-status"), "--timeout", "200ms"); code != 4 {
			t.Errorf("wait for an unknown VM: exit %d, want 4", code)
		}
		if code, _, _ := h.run(t, "vmcred-host push (nobody listening)", runOpts{env: credsEnv}, host, slices.Concat([]string{"push", "--vm", "demo", "--connect", "unix:" + p("agent", "none.sock"), "--sign-key", p("keys", "k.key"), "--status-dir", p("host-status"), "--timeout", "300ms"}, small)...); code != 4 {
			t.Errorf("push with no agent: exit %d, want 4", code)
		}
		if code, _, _ := h.run(t, "vmcred-guest agent (socket taken)", runOpts{}, guest, agentArgs(sock, tableA, gst("taken"), store)...); code == 0 {
			t.Errorf("a second agent on a socket in use: exit 0")
		}
		if code, _, _ := h.run(t, "vmcred-guest agent (unprivileged port)", runOpts{}, guest, "agent", "--listen", "vsock::5000", "--vm", "demo", "--trust-key", p("keys", "k.pub")); code != 2 {
			t.Errorf("agent on vsock port 5000: exit %d, want 2", code)
		}
		agent.cmd.Process.Signal(syscall.SIGTERM)
		if code, _, stderr := h.finish(t, agent, agentOpts); code != 0 {
			t.Errorf("agent: exit %d after SIGTERM: %s", code, stderr)
		}
		if snaps, _ := agent.watch.finish(); len(snaps[fmt.Sprintf("argv of pid %d (vmcred-guest)", agent.cmd.Process.Pid)]) == 0 {
			t.Errorf("never read the agent's argv from /proc while it ran")
		}

		// Firecracker: no firmware; everything, the manifest included,
		// comes in the session, and the agent keeps the manifest in its
		// status folder, which the hunt scans like every other file.
		fcSock := filepath.Join(agentDir, "fc.sock")
		fc := h.start(t, "vmcred-guest agent (no firmware)", agentOpts, guest, agentArgs(fcSock, p("tables", "missing.dmi"), gst("session-fc"), storeFC)...)
		waitForSocket(t, fcSock)
		code, _, stderr = h.run(t, "vmcred-host push (no firmware)", runOpts{env: credsEnv}, host, slices.Concat([]string{"push", "--vm", "demo", "--connect", "unix:" + fcSock, "--sign-key", p("keys", "k.key"), "--status-dir", p("host-status")}, sources)...)
		if code != 0 {
			t.Errorf("push (no firmware): exit %d: %s", code, stderr)
		}
		if _, err := os.Stat(filepath.Join(gst("session-fc"), "manifest")); err != nil {
			t.Errorf("the agent kept no manifest: %v", err)
		}
		fc.cmd.Process.Signal(syscall.SIGTERM)
		if code, _, stderr := h.finish(t, fc, agentOpts); code != 0 {
			t.Errorf("agent (no firmware): exit %d after SIGTERM: %s", code, stderr)
		}

		// serve: notify messages only; a socket in use and a bad address
		// are refused.
		nsock := p("notify.vsock_9")
		serve := h.start(t, "vmcred-host serve", runOpts{timeout: 20 * time.Second}, host, "serve", "--vm", "demo", "--listen", "unix:"+nsock)
		waitForSocket(t, nsock)
		if code, _, _ := h.run(t, "vmcred-host serve (socket taken)", runOpts{}, host, "serve", "--vm", "demo", "--listen", "unix:"+nsock); code == 0 {
			t.Errorf("a second serve on a socket in use: exit 0")
		}
		if code, _, _ := h.run(t, "vmcred-host serve (bad address)", runOpts{}, host, "serve", "--vm", "demo", "--listen", "bogus"); code != 2 {
			t.Errorf("serve --listen bogus: exit %d, want 2", code)
		}
		serve.cmd.Process.Signal(syscall.SIGTERM)
		if code, _, stderr := h.finish(t, serve, runOpts{timeout: 20 * time.Second}); code != 0 {
			t.Errorf("serve: exit %d after SIGTERM: %s", code, stderr)
		}
	})

	t.Run("host/run", func(t *testing.T) {
		script := p("child.sh")
		if err := os.WriteFile(script, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_FILE.tmp\" && mv \"$ARGS_FILE.tmp\" \"$ARGS_FILE\"\nsleep 0.4\nexit ${CHILD_EXIT:-0}\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			label string
			code  int
			exit  string
		}{{"child exits 0", 0, "0"}, {"child exits 7", 7, "7"}} {
			argsFile := p("child-args-" + c.exit)
			dir := rt("rt-run-" + c.exit)
			o := runOpts{env: append([]string{"ARGS_FILE=" + argsFile, "CHILD_EXIT=" + c.exit}, credsEnv...)}
			args := slices.Concat([]string{"run", "--vm", "demo", "--hypervisor", "qemu", "--sign-key", p("keys", "k.key"), "--runtime-dir", dir},
				small, []string{"--", script, "-machine", "q35"})
			r := h.start(t, "vmcred-host run ("+c.label+")", o, host, args...)
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := os.Stat(argsFile); err == nil {
					break
				}
				if time.Now().After(deadline) || r.exited() {
					t.Fatalf("run (%s): the child never started", c.label)
				}
				time.Sleep(5 * time.Millisecond)
			}
			code, _, stderr := h.finish(t, r, o)
			if code != c.code {
				t.Errorf("run (%s): exit %d, want %d: %s", c.label, code, c.code, stderr)
			}
			_, pids := r.watch.finish()
			var kids []string
			for pid, comm := range pids {
				if pid != r.cmd.Process.Pid {
					kids = append(kids, comm)
				}
			}
			if len(kids) == 0 {
				t.Errorf("run (%s): never saw the child in /proc", c.label)
			}
			if b, _ := os.ReadFile(argsFile); !bytes.Contains(b, []byte("type=11,path="+dir)) || !bytes.HasPrefix(b, []byte("-machine\nq35\n")) {
				t.Errorf("run (%s): the child did not get its own arguments and the -smbios ones", c.label)
			}
			if ents, _ := os.ReadDir(dir); len(ents) > 0 {
				t.Errorf("run (%s): %d file(s) left in the runtime folder after exit", c.label, len(ents))
			}
		}
		if code, _, _ := h.run(t, "vmcred-host run (missing command)", runOpts{}, host, slices.Concat([]string{"run", "--vm", "demo", "--hypervisor", "qemu", "--runtime-dir", rt("rt-run-x")}, small, []string{"--", p("no-such-hypervisor")})...); code == 0 {
			t.Errorf("run of a missing command: exit 0")
		}
		if code, _, _ := h.run(t, "vmcred-host run (literal --cred)", runOpts{argvMay: []string{"typo'd literal"}}, host, "run", "--vm", "demo", "--hypervisor", "qemu", "--cred", "api-key="+string(typo), "--", script); code != 2 {
			t.Errorf("run with a literal --cred: exit %d, want 2", code)
		}
	})

	t.Run("host/other-commands", func(t *testing.T) {
		known := []string{"pack", "check", "run", "keygen", "serve", "wait", "push"}
		for _, cmd := range helpCommands(t, host) {
			if slices.Contains(known, cmd) {
				continue
			}
			// A command added since: run it with what the others take.
			flags, _ := helpFlags(t, host, cmd)
			args := []string{cmd}
			for f, v := range map[string]string{"vm": "demo", "runtime-dir": p("rt-a"), "status-dir": p("host-status"), "timeout": "1s", "listen": "unix:" + p("other.sock")} {
				if flags[f] {
					args = append(args, "--"+f, v)
				}
			}
			code, _, _ := h.run(t, "vmcred-host "+cmd+" (generic)", runOpts{timeout: 10 * time.Second}, host, args...)
			t.Logf("vmcred-host %s (not known to this test) exited %d", cmd, code)
		}
	})

	t.Run("guest/debug-commands", func(t *testing.T) {
		scenarios := []struct {
			name  string
			flags map[string]string
		}{
			{"good", map[string]string{"dmi-table": tableA, "trust-key": p("keys", "k.pub"), "vm": "demo", "credstore": store, "status-dir": gst("good"), "system-credentials": "", "search-path": store}},
			{"credstore only", map[string]string{"credstore": store}},
			{"tampered", map[string]string{"dmi-table": tampered, "trust-key": p("keys", "k.pub"), "vm": "demo", "credstore": store, "status-dir": gst("tampered"), "system-credentials": "", "search-path": store}},
			{"another vm", map[string]string{"dmi-table": tableB, "trust-key": p("keys", "k.pub"), "vm": "demo", "credstore": store, "status-dir": gst("other-vm"), "system-credentials": "", "search-path": store}},
			{"wrong key", map[string]string{"dmi-table": tableA, "trust-key": p("keys", "other.pub"), "credstore": store, "status-dir": gst("wrong-key"), "system-credentials": "", "search-path": store}},
			{"private key as trust key", map[string]string{"dmi-table": tableA, "trust-key": p("keys", "k.key"), "credstore": store, "status-dir": gst("good"), "system-credentials": "", "search-path": store}},
			{"session", map[string]string{"dmi-table": p("tables", "missing.dmi"), "trust-key": p("keys", "k.pub"), "vm": "demo", "credstore": storeFC, "status-dir": gst("session-fc"), "system-credentials": "", "search-path": storeFC}},
			{"session, no firmware flag", map[string]string{"trust-key": p("keys", "k.pub"), "vm": "demo", "credstore": storeFC, "status-dir": gst("session-fc"), "system-credentials": "", "search-path": storeFC}},
			{"nothing there", map[string]string{"dmi-table": p("tables", "missing.dmi"), "credstore": filepath.Join(shm, "missing"), "status-dir": p("empty"), "system-credentials": "", "search-path": filepath.Join(shm, "missing")}},
		}
		// Exit codes the command-line contract fixes, where this test knows them.
		want := map[string]int{
			"list/good": 0, "list/credstore only": 0, "show/good": 0, "verify/good": 0, "verify/tampered": 1,
			"status/good": 0, "status/tampered": 1, "status/nothing there": 3,
			"verify/session": 0, "status/session": 0, "list/session, no firmware flag": 0, "verify/session, no firmware flag": 0, "show/session": 0,
		}
		cmds := helpCommands(t, guest)
		for _, cmd := range cmds {
			if cmd == "load" || cmd == "agent" {
				continue
			}
			flags, positional := helpFlags(t, guest, cmd)
			for _, sc := range scenarios {
				for _, asJSON := range []bool{false, true} {
					if asJSON && !flags["json"] {
						continue
					}
					args := []string{cmd}
					for range positional {
						args = append(args, "api-key")
					}
					keys := make([]string, 0, len(sc.flags))
					for f := range sc.flags {
						keys = append(keys, f)
					}
					sort.Strings(keys)
					for _, f := range keys {
						if flags[f] {
							args = append(args, "--"+f+"="+sc.flags[f])
						}
					}
					label := fmt.Sprintf("vmcred-guest %s (%s)", cmd, sc.name)
					if asJSON {
						args = append(args, "--json")
						label = fmt.Sprintf("vmcred-guest %s --json (%s)", cmd, sc.name)
					}
					code, stdout, stderr := h.run(t, label, runOpts{timeout: 15 * time.Second, digestsMay: true}, guest, args...)
					if w, ok := want[cmd+"/"+sc.name]; ok && code != w {
						t.Errorf("%s: exit %d, want %d: %s", label, code, w, stderr)
					}
					if asJSON && code != 2 && stdout != "" && !json.Valid([]byte(stdout)) {
						t.Errorf("%s: stdout is not JSON", label)
					}
				}
			}
			if !flags["reveal"] {
				continue
			}
			// --reveal: the value on stdout, exactly, and nowhere else.
			good := scenarios[0].flags
			loc := []string{"--credstore=" + store, "--search-path=" + store, "--system-credentials=", "--status-dir=" + good["status-dir"]}
			names := make([]string, 0, len(h.values))
			for n := range h.values {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, name := range names {
				code, _, stderr := h.run(t, fmt.Sprintf("vmcred-guest %s %s --reveal", cmd, name), runOpts{reveal: name}, guest, slices.Concat([]string{cmd, name, "--reveal"}, loc)...)
				if code != 0 {
					t.Errorf("%s %s --reveal: exit %d: %s", cmd, name, code, stderr)
				}
			}
			if code, stdout, _ := h.run(t, fmt.Sprintf("vmcred-guest %s --reveal --json", cmd), runOpts{}, guest, slices.Concat([]string{cmd, "api-key", "--reveal", "--json"}, loc)...); code != 2 || stdout != "" {
				t.Errorf("%s --reveal --json: exit %d with %d bytes of stdout, want 2 and nothing", cmd, code, len(stdout))
			}
			missing := []string{"--credstore=" + filepath.Join(shm, "missing"), "--search-path=" + filepath.Join(shm, "missing"), "--system-credentials=", "--status-dir=" + p("empty")}
			if code, stdout, _ := h.run(t, fmt.Sprintf("vmcred-guest %s --reveal (nothing there)", cmd), runOpts{}, guest, slices.Concat([]string{cmd, "api-key", "--reveal"}, missing)...); code == 0 || stdout != "" {
				t.Errorf("%s --reveal with nothing to reveal: exit %d with %d bytes of stdout", cmd, code, len(stdout))
			}
		}
		for _, cmd := range []string{"list", "show", "verify", "status"} {
			if !slices.Contains(cmds, cmd) {
				t.Logf("vmcred-guest --help does not list %s yet: not hunted", cmd)
			}
		}
	})

	t.Run("guest/hostile-table", func(t *testing.T) {
		// A table with strings systemd rejects, whose would-be values are
		// canaries, next to ones it takes; no manifest. Every guest
		// command reads it; none may echo a value, taken or rejected.
		vals := map[string][]byte{}
		add := func(label string, v []byte) []byte {
			vals[label] = v
			h.add(classSecret, "hostile-table string", label, v)
			return v
		}
		plain, dup1, vmc := add("plain", randomText()), add("dup", randomText()), add("vmc", randomBytes(40))
		strs := []string{
			oemText + "plain=" + string(plain),
			oemText + string(add("no equals", randomText())),
			oemSystemd + "bad64=" + string(add("bad base64", randomText())) + "!",
			oemText + "dup=" + string(dup1),
			oemText + "dup=" + string(add("duplicate", randomText())),
			oemText + "bad/name=" + string(add("bad name", randomText())),
			oemVmcred + "vmc=" + base64.StdEncoding.EncodeToString(vmc),
			"io.systemd.credentialX:near=" + string(add("near prefix", randomText())),
		}
		var tab []byte
		tab = smbios.AppendStructure(tab, 11, 0x0e00, []byte{byte(len(strs))}, strs)
		tab = smbios.AppendStructure(tab, 127, 0x7f00, nil, nil)
		hostile := p("tables", "hostile.dmi")
		if err := os.WriteFile(hostile, tab, 0o400); err != nil {
			t.Fatal(err)
		}
		h.files[hostile] = kindTestCopy
		store2 := filepath.Join(shm, "store2")
		h.dirs[store2] = kindCredstore
		loc := map[string]string{"dmi-table": hostile, "credstore": store2, "status-dir": gst("hostile"), "system-credentials": "", "search-path": store2}
		load := []string{"load", "--dmi-table", hostile, "--credstore", store2, "--status-dir", gst("hostile"), "--system-credentials", ""}
		if code, _, stderr := h.run(t, "vmcred-guest load (hostile table, no manifest)", runOpts{}, guest, load...); code != 1 {
			t.Errorf("load of a table without a manifest: exit %d, want 1: %s", code, stderr)
		}
		if code, _, stderr := h.run(t, "vmcred-guest load --allow-unverified (hostile table)", runOpts{}, guest, append(load, "--allow-unverified")...); code != 0 {
			t.Errorf("load --allow-unverified: exit %d, want 0: %s", code, stderr)
		}
		for name, want := range map[string][]byte{"plain": plain, "dup": dup1, "vmc": vmc} {
			if got, err := os.ReadFile(filepath.Join(store2, name)); err != nil || !bytes.Equal(got, want) {
				t.Errorf("credstore %s: not the value systemd's rules pick (%v)", name, err)
			}
		}
		if ents, _ := os.ReadDir(store2); len(ents) != 3 {
			t.Errorf("credstore holds %d files, want the 3 valid credentials", len(ents))
		}
		for _, cmd := range helpCommands(t, guest) {
			if cmd == "load" || cmd == "agent" {
				continue
			}
			flags, positional := helpFlags(t, guest, cmd)
			for _, asJSON := range []bool{false, true} {
				args := []string{cmd}
				for range positional {
					args = append(args, "dup")
				}
				for _, f := range slices.Sorted(maps.Keys(loc)) {
					if flags[f] {
						args = append(args, "--"+f+"="+loc[f])
					}
				}
				if asJSON {
					if !flags["json"] {
						continue
					}
					args = append(args, "--json")
				}
				h.run(t, fmt.Sprintf("vmcred-guest %s (hostile table, json %v)", cmd, asJSON), runOpts{timeout: 15 * time.Second}, guest, args...)
			}
			if flags["reveal"] {
				h.values["dup"] = dup1
				code, _, _ := h.run(t, "vmcred-guest "+cmd+" dup --reveal (hostile table)", runOpts{reveal: "dup"}, guest, cmd, "dup", "--reveal", "--credstore="+store2, "--search-path="+store2, "--system-credentials=", "--status-dir="+gst("hostile"))
				delete(h.values, "dup")
				if code != 0 {
					t.Errorf("%s dup --reveal: exit %d", cmd, code)
				}
			}
		}
	})

	// Last: everything left on disk, once more.
	h.scanTree(t)
	h.scanOthersReadable(t)
	t.Logf("%d runs, %d places searched for %d canary encodings; no values shown here", h.runs, h.places, len(h.all()))
}

// storeDigests maps each file in a credstore to its content.
func storeDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
