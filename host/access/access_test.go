package access

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmcred/vmcred/host/internal/goldenfile"
	"github.com/vmcred/vmcred/host/source"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fakeLookup knows root, microvm (kvm, plus supplementary group vmcred) and
// the groups of the fake tree.
func fakeLookup() Lookup {
	users := map[string]*user.User{
		"root":    {Uid: "0", Gid: "0", Username: "root"},
		"microvm": {Uid: "993", Gid: "302", Username: "microvm"},
	}
	groups := map[string]string{"0": "root", "62": "keys", "302": "kvm", "500": "vmcred"}
	return Lookup{
		User: func(name string) (*user.User, error) {
			if u, ok := users[name]; ok {
				return u, nil
			}
			return nil, user.UnknownUserError(name)
		},
		UserID: func(uid string) (*user.User, error) {
			for _, u := range users {
				if u.Uid == uid {
					return u, nil
				}
			}
			return nil, user.UnknownUserIdError(0)
		},
		GroupIDs: func(u *user.User) ([]string, error) {
			if u.Username == "microvm" {
				return []string{"302", "500"}, nil
			}
			return []string{u.Gid}, nil
		},
		GroupID: func(gid string) (*user.Group, error) {
			if n, ok := groups[gid]; ok {
				return &user.Group{Gid: gid, Name: n}, nil
			}
			return nil, user.UnknownGroupIdError(gid)
		},
	}
}

const (
	root    = 0
	microvm = 993
	keys    = 62
	kvm     = 302
	vmcred  = 500
)

func dir(uid, gid uint32, perm fs.FileMode) Info {
	return Info{Mode: fs.ModeDir | perm, UID: uid, GID: gid}
}
func file(uid, gid uint32, perm fs.FileMode) Info { return Info{Mode: perm, UID: uid, GID: gid} }
func link(target string) Info                     { return Info{Mode: fs.ModeSymlink | 0o777, Link: target} }

// fakeTree is a sops-nix-like layout: /run/secrets is a symlink into
// /run/secrets.d/1, as sops-nix makes it.
func fakeTree() map[string]Info {
	acl := file(root, root, 0o400)
	acl.ACL = true
	return map[string]Info{
		"/":                             dir(root, root, 0o755),
		"/run":                          dir(root, root, 0o755),
		"/run/secrets":                  link("/run/secrets.d/1"),
		"/run/secrets.d":                dir(root, keys, 0o751),
		"/run/secrets.d/1":              dir(root, keys, 0o751),
		"/run/secrets.d/1/api-key":      file(root, root, 0o400),
		"/run/secrets.d/1/kvm-key":      file(root, kvm, 0o440),
		"/run/secrets.d/1/sup-key":      file(root, vmcred, 0o440),
		"/run/secrets.d/1/owner-key":    file(microvm, root, 0o400),
		"/run/secrets.d/1/owner-noread": file(microvm, kvm, 0o040),
		"/run/secrets.d/1/world":        file(root, root, 0o444),
		"/run/secrets.d/1/up":           link("../../secrets.d/1/world"),
		"/run/rel":                      link("secrets.d/1/world"),
		"/run/acl":                      acl,
		"/run/fifo":                     {Mode: fs.ModeNamedPipe | 0o600},
		"/srv":                          dir(root, root, 0o700),
		"/srv/x":                        file(root, kvm, 0o440),
		"/loop":                         dir(root, root, 0o755),
		"/loop/a":                       link("/loop/b"),
		"/loop/b":                       link("a"),
		"/var":                          dir(root, root, 0o755),
		"/var/lib":                      dir(root, root, 0o755),
		"/var/lib/vm":                   dir(root, kvm, 0o710),
		"/var/lib/vm/a":                 file(root, kvm, 0o440),
	}
}

func fakeStat(tree map[string]Info) StatFunc {
	return func(path string) (Info, error) {
		if i, ok := tree[path]; ok {
			return i, nil
		}
		return Info{}, &fs.PathError{Op: "lstat", Path: path, Err: fs.ErrNotExist}
	}
}

func fileItem(name, path string) source.Item {
	return source.Item{Name: name, Secret: true, Origin: source.Origin{Kind: source.File, Path: path}}
}

// summary is the part of a Result a table test states.
type summary struct {
	Status   Status
	Via      string
	Resolved string
	File     string
	Blocked  []string
	ACL      []string
}

func summarize(r Result) summary {
	s := summary{Status: r.Status, Via: r.Via, Resolved: r.Resolved, ACL: r.ACL}
	if r.File != nil {
		s.File = r.File.String()
	}
	for _, b := range r.Blocked {
		s.Blocked = append(s.Blocked, b.Need+" "+b.Path+" "+b.String())
	}
	return s
}

func TestDiagnose(t *testing.T) {
	tests := []struct {
		name   string
		item   source.Item
		user   string
		want   summary
		reason string
	}{
		{
			name:   "root-only file through sops-nix symlink",
			item:   fileItem("api-key", "/run/secrets/api-key"),
			want:   summary{Status: Denied, Via: "others", Resolved: "/run/secrets.d/1/api-key", File: "root:root 0400"},
			reason: "microvm is not the owner (root) and not in group root, and others may not read it",
		},
		{
			name: "group kvm, the seed's fix",
			item: fileItem("kvm-key", "/run/secrets/kvm-key"),
			want: summary{Status: Readable, Via: "group kvm", Resolved: "/run/secrets.d/1/kvm-key", File: "root:kvm 0440"},
		},
		{
			name: "supplementary group",
			item: fileItem("sup-key", "/run/secrets.d/1/sup-key"),
			want: summary{Status: Readable, Via: "group vmcred", File: "root:vmcred 0440"},
		},
		{
			name: "owner",
			item: fileItem("owner-key", "/run/secrets.d/1/owner-key"),
			want: summary{Status: Readable, Via: "owner", File: "microvm:root 0400"},
		},
		{
			name:   "owner bits decide even when the group may read",
			item:   fileItem("owner-noread", "/run/secrets.d/1/owner-noread"),
			want:   summary{Status: Denied, Via: "owner", File: "microvm:kvm 0040"},
			reason: "microvm owns the file but the owner may not read it",
		},
		{
			name: "others",
			item: fileItem("world", "/run/secrets.d/1/world"),
			want: summary{Status: Readable, Via: "others", File: "root:root 0444"},
		},
		{
			name: "relative symlink",
			item: fileItem("rel", "/run/rel"),
			want: summary{Status: Readable, Via: "others", Resolved: "/run/secrets.d/1/world", File: "root:root 0444"},
		},
		{
			name: "symlink with ..",
			item: fileItem("up", "/run/secrets/up"),
			want: summary{Status: Readable, Via: "others", Resolved: "/run/secrets.d/1/world", File: "root:root 0444"},
		},
		{
			name:   "directory on the way not searchable",
			item:   fileItem("x", "/srv/x"),
			want:   summary{Status: Denied, Via: "group kvm", File: "root:kvm 0440", Blocked: []string{"search /srv root:root 0700"}},
			reason: "microvm may read the file (as group kvm) but cannot reach it",
		},
		{
			name: "cred-dir directory not listable",
			item: source.Item{Name: "a", Secret: true, Origin: source.Origin{Kind: source.Dir, Path: "/var/lib/vm/a", Dir: "/var/lib/vm"}},
			want: summary{Status: Denied, Via: "group kvm", File: "root:kvm 0440", Blocked: []string{"list /var/lib/vm root:kvm 0710"}},
		},
		{
			name: "ACL noted",
			item: fileItem("acl", "/run/acl"),
			want: summary{Status: Denied, Via: "others", File: "root:root 0400", ACL: []string{"/run/acl"}},
		},
		{
			name:   "missing",
			item:   fileItem("gone", "/run/secrets/gone"),
			want:   summary{Status: Missing},
			reason: "/run/secrets.d/1/gone: file does not exist",
		},
		{
			name:   "missing directory",
			item:   fileItem("gone", "/nonexistent/gone"),
			want:   summary{Status: Missing},
			reason: "/nonexistent: file does not exist",
		},
		{
			name:   "file used as a directory",
			item:   fileItem("x", "/run/secrets.d/1/world/x"),
			want:   summary{Status: Missing},
			reason: "/run/secrets.d/1/world: not a directory",
		},
		{
			name:   "FIFO",
			item:   fileItem("p", "/run/fifo"),
			want:   summary{Status: NotRegular, File: "root:root 0600"},
			reason: "not a regular file",
		},
		{
			name:   "symlink loop",
			item:   fileItem("loop", "/loop/a"),
			want:   summary{Status: Unknown},
			reason: "too many levels of symbolic links",
		},
		{
			name: "root reads anything",
			item: fileItem("api-key", "/srv/x"),
			user: "root",
			want: summary{Status: Readable, Via: "root", File: "root:kvm 0440"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Diagnose([]source.Item{tt.item}, Config{User: tt.user, VM: "test-vm", Lookup: fakeLookup(), Stat: fakeStat(fakeTree())})
			if err != nil {
				t.Fatalf("Diagnose: %v", err)
			}
			if len(r.Results) != 1 {
				t.Fatalf("got %d results, want 1", len(r.Results))
			}
			res := r.Results[0]
			if diff := cmp.Diff(tt.want, summarize(res)); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if tt.reason != "" && res.Reason != tt.reason {
				t.Errorf("reason %q, want %q", res.Reason, tt.reason)
			}
			if res.Readable != (res.Status == Readable) || r.OK() != res.Readable {
				t.Errorf("Readable %v, OK %v, status %s: inconsistent", res.Readable, r.OK(), res.Status)
			}
		})
	}
}

func TestDiagnoseUser(t *testing.T) {
	r, err := Diagnose(nil, Config{Lookup: fakeLookup(), Stat: fakeStat(fakeTree())})
	if err != nil {
		t.Fatalf("Diagnose: %v", err)
	}
	want := Report{
		User: "microvm", UID: "993",
		Groups: []Group{{GID: "302", Name: "kvm"}, {GID: "500", Name: "vmcred"}},
		VM:     "VM", Unit: "microvm@VM.service",
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if !r.OK() {
		t.Error("OK() is false with nothing to check")
	}
}

func TestDiagnoseUnknownUser(t *testing.T) {
	_, err := Diagnose(nil, Config{User: "ghost", Lookup: fakeLookup(), Stat: fakeStat(fakeTree())})
	var uerr user.UnknownUserError
	if !errors.As(err, &uerr) {
		t.Fatalf("error %v, want a user.UnknownUserError", err)
	}
	for _, w := range []string{`look up user "ghost"`, "--as-user"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestStaticSkipped(t *testing.T) {
	r, err := Diagnose([]source.Item{{Name: "ENVIRONMENT", Origin: source.Origin{Kind: source.Static}}},
		Config{Lookup: fakeLookup(), Stat: fakeStat(fakeTree())})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Results) != 0 {
		t.Errorf("static credential checked: %+v", r.Results)
	}
}

func TestFix(t *testing.T) {
	tree := fakeTree()
	tree["/run/secrets.d/1/per%cent dir"] = dir(root, root, 0o755)
	tree["/run/secrets.d/1/per%cent dir/k"] = file(root, root, 0o400)
	items := []source.Item{
		fileItem("api-key", "/run/secrets/api-key"),
		fileItem("kvm-key", "/run/secrets/kvm-key"), // readable: not in the fix
		fileItem("x", "/srv/x"),
		fileItem("50%", "/run/secrets/per%cent dir/k"),
		fileItem("gone", "/run/gone"), // missing: no fix can help
		{Name: "a", Secret: true, Origin: source.Origin{Kind: source.Dir, Path: "/var/lib/vm/a", Dir: "/var/lib/vm"}},
		// systemd already made this one; no drop-in for it.
		{Name: "cd", Secret: true, Origin: source.Origin{Kind: source.CredentialsDirectory, Path: "/run/acl", Dir: "/run"}},
	}
	r, err := Diagnose(items, Config{VM: "test-vm", Lookup: fakeLookup(), Stat: fakeStat(tree)})
	if err != nil {
		t.Fatal(err)
	}
	want := &Fix{
		DropInPath: "/etc/systemd/system/microvm@test-vm.service.d/vmcred.conf",
		DropIn: "[Service]\n" +
			"LoadCredential=api-key:/run/secrets/api-key\n" +
			"LoadCredential=x:/srv/x\n" +
			"LoadCredential=50%%:/run/secrets/per%%cent dir/k\n" +
			"LoadCredential=a:/var/lib/vm/a\n",
		Then: []string{"systemctl daemon-reload", "systemctl restart microvm@test-vm.service"},
		Flag: "--from-credentials-directory=api-key,x,50%,a",
		Alternative: []string{
			"chgrp kvm /run/secrets/api-key",
			"chmod 0440 /run/secrets/api-key",
			"# /srv (root:root 0700) must let microvm pass too (o+x: anyone may pass, not list)",
			"chmod o+x /srv",
			"chgrp kvm '/run/secrets/per%cent dir/k'",
			"chmod 0440 '/run/secrets/per%cent dir/k'",
			"# /var/lib/vm (root:kvm 0710) must be listable by microvm too",
			"chgrp kvm /var/lib/vm",
			"chmod g+rx /var/lib/vm",
		},
	}
	got := r.Fix
	if got == nil {
		t.Fatal("no fix")
	}
	got.Warning = ""
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fix (-want +got):\n%s", diff)
	}
	if r.OK() {
		t.Error("OK() is true with unreadable credentials")
	}
}

func TestFixWarning(t *testing.T) {
	r, err := Diagnose([]source.Item{fileItem("api-key", "/run/secrets/api-key")},
		Config{VM: "test-vm", Lookup: fakeLookup(), Stat: fakeStat(fakeTree())})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"group kvm", "every VM", "every VM's secrets", "LoadCredential="} {
		if !strings.Contains(r.Fix.Warning, w) {
			t.Errorf("warning %q does not contain %q", r.Fix.Warning, w)
		}
	}
}

func TestFixCommaInName(t *testing.T) {
	tree := fakeTree()
	tree["/run/a,b"] = file(root, root, 0o400)
	r, err := Diagnose([]source.Item{fileItem("a,b", "/run/a,b")}, Config{Lookup: fakeLookup(), Stat: fakeStat(tree)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Fix.Flag, "--from-credentials-directory"; got != want {
		t.Errorf("flag %q, want %q: the list form splits on ','", got, want)
	}
}

// TestGolden checks the text and JSON forms against testdata; refresh with
// go test ./host/access -run TestGolden -update.
func TestGolden(t *testing.T) {
	tree := fakeTree()
	tree["/var/lib/vmcred"] = dir(root, root, 0o755)
	tree["/var/lib/vmcred/test-vm"] = dir(root, kvm, 0o750)
	tree["/var/lib/vmcred/test-vm/db-password"] = file(root, kvm, 0o440)
	items := []source.Item{
		fileItem("api-key", "/run/secrets/api-key"),
		fileItem("db-password", "/var/lib/vmcred/test-vm/db-password"),
		fileItem("jwt-secret", "/srv/x"),
		fileItem("gone", "/run/secrets/gone"),
		fileItem("acl", "/run/acl"),
	}
	r, err := Diagnose(items, Config{VM: "test-vm", Lookup: fakeLookup(), Stat: fakeStat(tree)})
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(text.String(), "\n") {
		// Only paths and commands may pass 80 columns.
		if len(line) > width && !strings.Contains(line, "/") {
			t.Errorf("line of %d columns: %q", len(line), line)
		}
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not parse: %v", err)
	}
	golden(t, "report.txt", text.Bytes())
	golden(t, "report.json", js.Bytes())
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	goldenfile.Check(t, *update, name, got)
}

// TestNobodyRootFile is the real-system check: a root:root 0400 file, as
// clan vars deploys secrets, is not readable by nobody.
func TestNobodyRootFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a root:root file; run the tests as root (or in CI) to cover the real system")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skipf("no user nobody on this system: %v", err)
	}
	// TempDir's directories are 0700; open them so that the file itself is
	// what stops nobody.
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(d, "api-key")
	if err := os.WriteFile(p, []byte("value"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 0, 0); err != nil {
		t.Fatal(err)
	}
	r, err := Diagnose([]source.Item{fileItem("api-key", p)}, Config{User: "nobody", VM: "test-vm"})
	if err != nil {
		t.Fatalf("Diagnose: %v", err)
	}
	if r.OK() {
		t.Error("OK() is true for a root:root 0400 file and user nobody")
	}
	res := r.Results[0]
	if res.Status != Denied || res.Readable {
		t.Errorf("status %s, readable %v; want denied", res.Status, res.Readable)
	}
	if len(res.Blocked) != 0 {
		t.Errorf("blocked by %v; want only the file to stop nobody", res.Blocked)
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"root:root 0400", "NOT READABLE", "LoadCredential=api-key:" + p, "microvm@test-vm.service.d/vmcred.conf", "chmod 0440"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("report does not contain %q:\n%s", w, text.String())
		}
	}
}

// TestTextWithoutVMOrPlural: without --vm the report does not ask about
// "VM ?", and one credential is not "1 credentials".
func TestTextWithoutVMOrPlural(t *testing.T) {
	tree := fakeTree()
	r, err := Diagnose([]source.Item{fileItem("api-key", "/run/secrets/api-key")}, Config{Lookup: fakeLookup(), Stat: fakeStat(tree)})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"of VM ?", "VM ?", "1 credentials", "(s)"} {
		if strings.Contains(text.String(), bad) {
			t.Errorf("report holds %q:\n%s", bad, text.String())
		}
	}
	if !strings.Contains(text.String(), "read these credentials?") {
		t.Errorf("report does not ask about these credentials:\n%s", text.String())
	}
}
