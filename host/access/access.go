// Package access is the permission doctor behind
// "vmcred-host check --as-user USER": for each credential source it decides
// whether USER (by default microvm, which microvm@.service runs every
// hypervisor as) can read it, and if not, says why and prints the fix.
//
// It reproduces Linux's path resolution for USER: every directory on the way
// must be searchable (x), every symlink is followed (up to 40, like the
// kernel), the file must be readable (r), and a --cred-dir directory must
// also be listable (r). Permission comes from the owner, group and mode bits
// with USER's primary and supplementary groups, which are the groups systemd
// gives a unit with User= (initgroups). Root may read anything. POSIX ACLs
// are not evaluated: a path that has one is flagged, and the verdict for it
// comes from the mode bits alone. Capabilities and LSMs (AppArmor, SELinux)
// are not modelled either.
//
// The fix it prints prefers a systemd drop-in that gives the VM's unit
// LoadCredential=NAME:PATH lines: the secrets stay root:root 0400, systemd
// (as root) copies them into the unit's private $CREDENTIALS_DIRECTORY, and
// the hypervisor hook reads them with --from-credentials-directory. The
// alternative, chgrp kvm and chmod 0440, comes with its warning: every VM on
// the host runs as microvm:kvm, so every VM could then read every VM's
// secrets.
//
// Example of Report.WriteText for a clan host with sops-nix (rewrapped to
// fit this comment and cut at "..."; testdata/report.txt is real output):
//
//	vmcred-host check: can microvm read the credentials of VM test-vm?
//	user       microvm (uid 993)
//	groups     kvm (302)
//
//	api-key                                                     NOT READABLE
//	  path       /run/secrets/vars/per-machine/host/test-vm-secrets/api-key
//	  target     /run/secrets.d/1/vars/per-machine/host/test-vm-secrets/api-key
//	  file       root:root 0400
//	  why        microvm is not the owner (root) and not in group root, and
//	             others may not read it
//	db-password                                                     readable
//	  path       /var/lib/vmcred/test-vm/db-password
//	  file       root:kvm 0440, readable as group kvm
//
//	microvm cannot read 1 of 2 credentials.
//
//	Fix (recommended): keep the files root-only and let systemd hand them to
//	the VM's unit. Create this drop-in:
//
//	# /etc/systemd/system/microvm@test-vm.service.d/vmcred.conf
//	[Service]
//	LoadCredential=api-key:/run/secrets/vars/per-machine/host/test-vm-secrets/api-key
//
//	then run:
//
//	systemctl daemon-reload
//	systemctl restart microvm@test-vm.service
//
//	and give the hypervisor hook --from-credentials-directory=api-key instead
//	of --cred or --cred-dir for these credentials. On NixOS the vmcred host
//	module does all of this.
//
//	Alternative (not recommended): make the files readable by group kvm:
//
//	chgrp kvm /run/secrets/vars/per-machine/host/test-vm-secrets/api-key
//	chmod 0440 /run/secrets/vars/per-machine/host/test-vm-secrets/api-key
//
//	Warning: group kvm is the group every VM on this host runs as
//	(microvm@.service runs all of them as microvm:kvm), so every VM, and
//	anything else in group kvm, could then read every VM's secrets. ...
//
// This package is for host code. It does not log and touches the system only
// through the Lookup and StatFunc it is given (OSLookup and OSStat by
// default).
package access

import (
	"errors"
	"fmt"
	"io/fs"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmcred/vmcred/host/source"
)

// DefaultUser is the user microvm.nix's microvm@.service runs hypervisors as
// (User=microvm, Group=kvm).
const DefaultUser = "microvm"

// maxSymlinks is Linux's limit on symlinks followed in one path lookup
// (MAXSYMLINKS, 40).
const maxSymlinks = 40

// Info is what the doctor needs to know about one path, without following
// a final symlink (lstat semantics).
type Info struct {
	// Mode is the file's type and permission bits.
	Mode fs.FileMode
	// UID and GID own the file.
	UID, GID uint32
	// Link is the symlink's target, when Mode is a symlink.
	Link string
	// ACL is true when the path has a POSIX access ACL
	// (system.posix_acl_access), which the doctor does not evaluate.
	ACL bool
}

// StatFunc returns Info for path without following a final symlink.
type StatFunc func(path string) (Info, error)

// Lookup finds users and groups; nil fields use os/user, which without cgo
// parses /etc/passwd and /etc/group. Tests inject fakes.
type Lookup struct {
	// User finds an account by name (user.Lookup).
	User func(name string) (*user.User, error)
	// UserID finds an account by uid, to name file owners (user.LookupId).
	UserID func(uid string) (*user.User, error)
	// GroupIDs lists an account's groups, primary first ((*user.User).GroupIds).
	GroupIDs func(u *user.User) ([]string, error)
	// GroupID finds a group by gid, to name groups (user.LookupGroupId).
	GroupID func(gid string) (*user.Group, error)
}

// OSLookup returns a Lookup backed by os/user.
func OSLookup() Lookup {
	return Lookup{
		User:     user.Lookup,
		UserID:   user.LookupId,
		GroupIDs: (*user.User).GroupIds,
		GroupID:  user.LookupGroupId,
	}
}

func (l Lookup) withDefaults() Lookup {
	d := OSLookup()
	if l.User == nil {
		l.User = d.User
	}
	if l.UserID == nil {
		l.UserID = d.UserID
	}
	if l.GroupIDs == nil {
		l.GroupIDs = d.GroupIDs
	}
	if l.GroupID == nil {
		l.GroupID = d.GroupID
	}
	return l
}

// Config says whom to check for and how to reach the system.
type Config struct {
	// User is the account the hypervisor runs as; "" means DefaultUser.
	User string
	// VM is the VM's name, used in the fix; "" prints the placeholder "VM".
	VM string
	// Unit is the VM's systemd unit; "" means microvm@VM.service.
	Unit string
	// Lookup finds users and groups; zero fields use os/user.
	Lookup Lookup
	// Stat reads file metadata; nil means OSStat.
	Stat StatFunc
}

// Status is the verdict for one credential.
type Status string

// Verdicts.
const (
	// Readable: the user can read the file.
	Readable Status = "readable"
	// Denied: the file exists but the user cannot read it.
	Denied Status = "denied"
	// Missing: the file, or a directory on its path, does not exist.
	Missing Status = "missing"
	// NotRegular: the path leads to a directory, FIFO, socket or device.
	NotRegular Status = "not-regular"
	// Unknown: the doctor could not find out (e.g. it is not root itself
	// and was denied, or a symlink loop).
	Unknown Status = "unknown"
)

// Entry is one file or directory with its ownership, for reports.
type Entry struct {
	Path  string `json:"path"`
	Owner string `json:"owner"`
	Group string `json:"group"`
	// Mode is octal permission bits with setuid, setgid and sticky, e.g. "0400".
	Mode string `json:"mode"`
	// Need is what the user lacks on a blocking directory: "search" (x) to
	// pass through it, or "list" (r and x) to read its entries.
	Need string `json:"need,omitempty"`
}

// String returns "owner:group mode", e.g. "root:root 0400".
func (e Entry) String() string { return e.Owner + ":" + e.Group + " " + e.Mode }

// Result is the doctor's finding for one credential.
type Result struct {
	// Name is the credential name.
	Name string `json:"name"`
	// Source is the flag it came from.
	Source source.Kind `json:"source"`
	// Path is the file as the source gave it, made absolute.
	Path string `json:"path"`
	// Resolved is where Path leads through symlinks, if elsewhere.
	Resolved string `json:"resolved,omitempty"`
	// File is the final file's ownership and mode; nil if it is missing.
	File *Entry `json:"file,omitempty"`
	// Status is the verdict; Readable is Status == Readable.
	Status   Status `json:"status"`
	Readable bool   `json:"readable"`
	// Via says which permission bits decided for the file: "owner",
	// "group NAME", "others" or "root".
	Via string `json:"via,omitempty"`
	// Reason explains a verdict other than Readable.
	Reason string `json:"reason,omitempty"`
	// Blocked lists directories on the way that the user cannot search,
	// and a --cred-dir directory it cannot list.
	Blocked []Entry `json:"blocked_by,omitempty"`
	// ACL lists paths on the way that have a POSIX ACL, not evaluated.
	ACL []string `json:"acl,omitempty"`
}

// Group is one of the user's groups.
type Group struct {
	GID  string `json:"gid"`
	Name string `json:"name"`
}

// String returns "name (gid)".
func (g Group) String() string { return fmt.Sprintf("%s (%s)", g.Name, g.GID) }

// Fix is what to do about unreadable credentials, as text to paste.
type Fix struct {
	// DropInPath and DropIn are the recommended systemd drop-in for the
	// VM's unit: one LoadCredential=NAME:PATH line per unreadable file.
	DropInPath string `json:"drop_in_path"`
	DropIn     string `json:"drop_in"`
	// Then are the commands to run after writing the drop-in.
	Then []string `json:"then"`
	// Flag is what the hypervisor hook then uses instead of --cred or
	// --cred-dir for these credentials.
	Flag string `json:"flag"`
	// Alternative are shell commands for the discouraged group route;
	// lines starting with '#' are comments.
	Alternative []string `json:"alternative"`
	// Warning says why the alternative is discouraged.
	Warning string `json:"warning"`
}

// Report is the doctor's answer for one user and one VM.
type Report struct {
	// User, UID and Groups describe the account checked.
	User   string  `json:"user"`
	UID    string  `json:"uid"`
	Groups []Group `json:"groups"`
	// VM and Unit are the VM's name and systemd unit, as used in the fix.
	VM   string `json:"vm"`
	Unit string `json:"unit"`
	// Results has one entry per credential with a file, in input order.
	Results []Result `json:"results"`
	// Fix is set when some credential that a drop-in can fix is unreadable.
	Fix *Fix `json:"fix,omitempty"`
}

// OK reports whether the user can read every credential.
func (r Report) OK() bool {
	for _, res := range r.Results {
		if !res.Readable {
			return false
		}
	}
	return true
}

// Diagnose decides, for every item with a file (Static ones are skipped),
// whether cfg.User can read it, and builds the fix for those it cannot. It
// fails only when the user or its groups cannot be looked up; problems with
// a file are findings in its Result.
func Diagnose(items []source.Item, cfg Config) (Report, error) {
	d, err := newDoctor(cfg)
	if err != nil {
		return Report{}, err
	}
	r := Report{User: d.name, UID: d.u.Uid, Groups: d.groups, VM: cfg.VM, Unit: cfg.Unit}
	if r.VM == "" {
		r.VM = "VM"
	}
	if r.Unit == "" {
		r.Unit = "microvm@" + r.VM + ".service"
	}
	for _, it := range items {
		if it.Origin.Path == "" {
			continue
		}
		res, fileOK := d.check(it)
		r.Results = append(r.Results, res)
		d.fileOK = append(d.fileOK, fileOK)
	}
	r.Fix = d.fix(r)
	return r, nil
}

// doctor holds one Diagnose run.
type doctor struct {
	name    string
	u       *user.User
	uid     uint32
	gids    map[uint32]bool
	primary string // name of the user's primary group
	groups  []Group
	lookup  Lookup
	stat    StatFunc
	names   map[string]string // cache of uid/gid names, keys "u123"/"g123"
	// fileOK[i] says whether the user may read Results[i]'s file itself
	// (whatever blocks the way), so the group route only changes what needs it.
	fileOK []bool
}

func newDoctor(cfg Config) (*doctor, error) {
	d := &doctor{name: cfg.User, lookup: cfg.Lookup.withDefaults(), stat: cfg.Stat, names: make(map[string]string)}
	if d.name == "" {
		d.name = DefaultUser
	}
	if d.stat == nil {
		d.stat = OSStat
	}
	u, err := d.lookup.User(d.name)
	if err != nil {
		return nil, fmt.Errorf("look up user %q, whom the hypervisor runs as (microvm.nix uses %s; choose another with --as-user): %w",
			d.name, DefaultUser, err)
	}
	d.u = u
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has uid %q, not a number", d.name, u.Uid)
	}
	d.uid = uint32(uid)
	gids, err := d.lookup.GroupIDs(u)
	if err != nil {
		return nil, fmt.Errorf("look up the groups of user %q: %w", d.name, err)
	}
	// GroupIds lists the primary group first; make sure it is there once.
	gids = append([]string{u.Gid}, gids...)
	d.gids = make(map[uint32]bool)
	for _, g := range gids {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %q is in group %q, not a number", d.name, g)
		}
		if d.gids[uint32(n)] {
			continue
		}
		d.gids[uint32(n)] = true
		d.groups = append(d.groups, Group{GID: g, Name: d.groupName(uint32(n))})
	}
	d.primary = d.groups[0].Name
	return d, nil
}

func (d *doctor) userName(uid uint32) string {
	k := "u" + strconv.FormatUint(uint64(uid), 10)
	if n, ok := d.names[k]; ok {
		return n
	}
	n := strconv.FormatUint(uint64(uid), 10)
	if u, err := d.lookup.UserID(n); err == nil {
		n = u.Username
	}
	d.names[k] = n
	return n
}

func (d *doctor) groupName(gid uint32) string {
	k := "g" + strconv.FormatUint(uint64(gid), 10)
	if n, ok := d.names[k]; ok {
		return n
	}
	n := strconv.FormatUint(uint64(gid), 10)
	if g, err := d.lookup.GroupID(n); err == nil {
		n = g.Name
	}
	d.names[k] = n
	return n
}

func (d *doctor) entry(path string, info Info) Entry {
	return Entry{Path: path, Owner: d.userName(info.UID), Group: d.groupName(info.GID), Mode: octal(info.Mode)}
}

// octal formats permission bits the way ls and chmod do: "0400", "1777".
func octal(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// Permission bits asked for, as in the "other" triple.
const (
	read   fs.FileMode = 4
	search fs.FileMode = 1
)

// may reports whether the user has want on a file with info, and which
// bits decided: Linux checks owner, else group, else others, and stops at
// the first class that matches, even if a later one would allow more.
func (d *doctor) may(info Info, want fs.FileMode) (bool, string) {
	if d.uid == 0 {
		return true, "root"
	}
	p := info.Mode.Perm()
	switch {
	case info.UID == d.uid:
		return p>>6&want == want, "owner"
	case d.gids[info.GID]:
		return p>>3&want == want, "group " + d.groupName(info.GID)
	default:
		return p&want == want, "others"
	}
}

// walk is the outcome of resolving one path.
type walk struct {
	final   string // the path reached after symlinks
	info    Info
	blocked []Entry
	acl     []string
}

// resolve follows path component by component like the kernel's lookup,
// recording each directory the user may not search. It keeps going past
// such a directory (the doctor itself can usually see further) so the
// report shows the file's ownership too. The error is the first one hit,
// wrapped in a *fs.PathError naming the component.
func (d *doctor) resolve(path string) (walk, error) {
	var w walk
	cur := "/"
	info, err := d.stat(cur)
	if err != nil {
		return w, &fs.PathError{Op: "lstat", Path: cur, Err: err}
	}
	d.dir(cur, info, "search", &w)
	rest := split(path)
	links := 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		info, err := d.stat(next)
		if err != nil {
			var pe *fs.PathError
			if !errors.As(err, &pe) {
				err = &fs.PathError{Op: "lstat", Path: next, Err: err}
			}
			return w, err
		}
		if info.ACL {
			w.acl = append(w.acl, next)
		}
		if info.Mode&fs.ModeSymlink != 0 {
			if links++; links > maxSymlinks {
				return w, &fs.PathError{Op: "resolve", Path: path, Err: syscall.ELOOP}
			}
			if filepath.IsAbs(info.Link) {
				cur = "/"
			}
			rest = append(split(info.Link), rest...)
			continue
		}
		if len(rest) > 0 {
			if !info.Mode.IsDir() {
				return w, &fs.PathError{Op: "resolve", Path: next, Err: syscall.ENOTDIR}
			}
			d.dir(next, info, "search", &w)
			cur = next
			continue
		}
		w.final, w.info = next, info
	}
	if w.final == "" {
		// The path was "/" or only led back to a directory.
		w.final = cur
		w.info, err = d.stat(cur)
	}
	return w, err
}

// dir records a directory the user lacks need on ("search", or "list",
// which needs read and search).
func (d *doctor) dir(path string, info Info, need string, w *walk) {
	want := search
	if need == "list" {
		want = read | search
	}
	if ok, _ := d.may(info, want); !ok {
		e := d.entry(path, info)
		e.Need = need
		w.blocked = append(w.blocked, e)
	}
}

func split(p string) []string {
	var out []string
	for c := range strings.SplitSeq(p, "/") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// check diagnoses one item; fileOK says whether the file's own mode lets
// the user read it.
func (d *doctor) check(it source.Item) (res Result, fileOK bool) {
	path := it.Origin.Path
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	res = Result{Name: it.Name, Source: it.Origin.Kind, Path: path}
	w, err := d.resolve(path)
	res.Blocked, res.ACL = w.blocked, w.acl
	if err == nil && w.final != path {
		res.Resolved = w.final
	}
	if err != nil {
		res.Status, res.Reason = Unknown, errText(err)
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			res.Status = Missing
		case errors.Is(err, syscall.ELOOP):
			res.Reason = "too many levels of symbolic links"
		}
		// A missing file is not blocked by the directories above it in any
		// way a fix here could help with.
		res.Blocked = nil
		return res, false
	}
	f := d.entry(w.final, w.info)
	res.File = &f
	if !w.info.Mode.IsRegular() {
		res.Status, res.Reason = NotRegular, "not a regular file"
		return res, false
	}
	// vmcred-host lists a --cred-dir directory, so it must be readable too.
	if it.Origin.Kind == source.Dir && it.Origin.Dir != "" {
		dir := it.Origin.Dir
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
		if dw, err := d.resolve(dir); err == nil {
			var lw walk
			d.dir(dw.final, dw.info, "list", &lw)
			for _, b := range append(dw.blocked, lw.blocked...) {
				if !slices.Contains(res.Blocked, b) {
					res.Blocked = append(res.Blocked, b)
				}
			}
			if len(lw.blocked) > 0 {
				// "list" on the directory says all that "search" did.
				res.Blocked = slices.DeleteFunc(res.Blocked, func(b Entry) bool {
					return b.Path == dw.final && b.Need == "search"
				})
			}
		}
	}
	ok, via := d.may(w.info, read)
	res.Via = via
	switch {
	case ok && len(res.Blocked) == 0:
		res.Status, res.Readable = Readable, true
	case ok:
		res.Status = Denied
		res.Reason = fmt.Sprintf("%s may read the file (as %s) but cannot reach it", d.name, via)
	default:
		res.Status = Denied
		res.Reason = d.denied(w.info, via)
	}
	return res, ok
}

// denied explains why the read bit is missing for the class that applies.
func (d *doctor) denied(info Info, via string) string {
	switch {
	case via == "owner":
		return fmt.Sprintf("%s owns the file but the owner may not read it", d.name)
	case strings.HasPrefix(via, "group "):
		return fmt.Sprintf("%s is in %s, which may not read the file", d.name, via)
	}
	return fmt.Sprintf("%s is not the owner (%s) and not in group %s, and others may not read it",
		d.name, d.userName(info.UID), d.groupName(info.GID))
}

// errText is an error's text without the operation ("lstat") of a
// *fs.PathError: "PATH: CAUSE", where PATH is the component that failed,
// which may be a directory above the file.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Path + ": " + pe.Err.Error()
	}
	return err.Error()
}

// fix builds the drop-in and the alternative for unreadable credentials
// whose files vmcred-host was told about directly (--cred, --cred-dir); for
// $CREDENTIALS_DIRECTORY files systemd already did this.
func (d *doctor) fix(r Report) *Fix {
	var denied []Result
	var fileOK []bool
	for i, res := range r.Results {
		if res.Status == Denied && (res.Source == source.File || res.Source == source.Dir) {
			denied = append(denied, res)
			fileOK = append(fileOK, d.fileOK[i])
		}
	}
	if len(denied) == 0 {
		return nil
	}
	f := &Fix{DropInPath: "/etc/systemd/system/" + r.Unit + ".d/vmcred.conf"}
	var b strings.Builder
	b.WriteString("[Service]\n")
	var names []string
	comma := false
	for _, res := range denied {
		// Path, not Resolved: sops-nix's symlink stays put while its target
		// moves to a new /run/secrets.d/N on every activation, and systemd
		// follows it as root. '%' starts a unit-file specifier.
		fmt.Fprintf(&b, "LoadCredential=%s:%s\n", unitEscape(res.Name), unitEscape(res.Path))
		names = append(names, res.Name)
		comma = comma || strings.Contains(res.Name, ",")
	}
	f.DropIn = b.String()
	f.Then = []string{"systemctl daemon-reload", "systemctl restart " + r.Unit}
	f.Flag = "--from-credentials-directory=" + strings.Join(names, ",")
	if comma {
		// The list form splits on ','; the bare flag reads every file.
		f.Flag = "--from-credentials-directory"
	}

	group := d.primary
	var dirs []string
	for i, res := range denied {
		if !fileOK[i] {
			f.Alternative = append(f.Alternative,
				"chgrp "+shellQuote(group)+" "+shellQuote(res.Path),
				"chmod 0440 "+shellQuote(res.Path))
		}
		for _, b := range res.Blocked {
			if slices.Contains(dirs, b.Path+b.Need) {
				continue
			}
			dirs = append(dirs, b.Path+b.Need)
			if b.Need == "list" {
				f.Alternative = append(f.Alternative,
					fmt.Sprintf("# %s (%s) must be listable by %s too", b.Path, b, d.name),
					"chgrp "+shellQuote(group)+" "+shellQuote(b.Path),
					"chmod g+rx "+shellQuote(b.Path))
			} else {
				f.Alternative = append(f.Alternative,
					fmt.Sprintf("# %s (%s) must let %s pass too (o+x: anyone may pass, not list)", b.Path, b, d.name),
					"chmod o+x "+shellQuote(b.Path))
			}
		}
	}
	f.Warning = fmt.Sprintf("group %s is the group every VM on this host runs as "+
		"(microvm@.service runs all of them as %s:%s), so every VM, and anything else in group %s, "+
		"could then read every VM's secrets. clan vars and sops-nix also reset owner, group and mode "+
		"on every activation, so the change would have to go into the secret's definition, "+
		"which clan's documentation advises against: it recommends LoadCredential=.",
		group, d.name, group, group)
	return f
}

// unitEscape doubles '%', which systemd unit files treat as a specifier.
func unitEscape(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// shellQuote quotes s for a POSIX shell when it has anything but safe bytes.
func shellQuote(s string) string {
	safe := s != ""
	for _, c := range s {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune("/._-+:@,=%", c)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
