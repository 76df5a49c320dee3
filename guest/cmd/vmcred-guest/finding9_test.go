package main

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/manifest"
)

// TestFinding9TrustKeyOwnerAndMode is finding 9 of issue 17: --trust-key
// files and folders were read with no owner or mode check, so a user who
// could write the folder or the file (0777, 0666, or their own file) chose
// which manifests pass. Each planted key here is refused with exit 1 and a
// message naming the file; a key file and folder as keygen and NixOS leave
// them (0444/0644 in a 0755 folder) still pass.
func TestFinding9TrustKeyOwnerAndMode(t *testing.T) {
	pubFile := func(seed byte) []byte {
		b, err := manifest.MarshalPublicKey(key(seed).Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	setup := func(t *testing.T, dirMode, fileMode os.FileMode, owner int) (dir, file string) {
		t.Helper()
		dir = filepath.Join(t.TempDir(), "trusted.d")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(dir, "attacker.pub")
		if err := os.WriteFile(file, pubFile(9), 0o600); err != nil {
			t.Fatal(err)
		}
		if owner >= 0 {
			if err := os.Chown(file, owner, owner); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(file, fileMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, dirMode); err != nil {
			t.Fatal(err)
		}
		return dir, file
	}
	refused := []struct {
		name              string
		dirMode, fileMode os.FileMode
		owner             int // -1: this user
		useFile           bool
		needRoot          bool
	}{
		{name: "world-writable folder", dirMode: 0o777, fileMode: 0o444, owner: -1},
		{name: "group-writable folder", dirMode: 0o775, fileMode: 0o444, owner: -1},
		{name: "world-writable key file", dirMode: 0o755, fileMode: 0o666, owner: -1, useFile: true},
		{name: "group-writable key in folder", dirMode: 0o755, fileMode: 0o464, owner: -1},
		{name: "key owned by another user", dirMode: 0o755, fileMode: 0o444, owner: 65534, needRoot: true},
		{name: "key file named, owned by another user", dirMode: 0o755, fileMode: 0o444, owner: 65534, useFile: true, needRoot: true},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needRoot && os.Geteuid() != 0 {
				t.Skip("needs root to give the key file to another uid")
			}
			dir, file := setup(t, tc.dirMode, tc.fileMode, tc.owner)
			p := policyFlags{trustKeys: []string{dir}}
			if tc.useFile {
				p.trustKeys = []string{file}
			}
			keys, err := p.keys()
			if err == nil {
				t.Fatalf("accepted %d planted key(s)", len(keys))
			}
			if cli.CodeOf(err) != cli.ExitFailure || !strings.Contains(err.Error(), p.trustKeys[0]) && !strings.Contains(err.Error(), dir) {
				t.Errorf("err = %v (exit %d), want exit 1 naming the file or folder", err, cli.CodeOf(err))
			}
		})
	}
	t.Run("safe key accepted", func(t *testing.T) {
		dir, file := setup(t, 0o755, 0o444, -1)
		for _, p := range []string{dir, file} {
			keys, err := (&policyFlags{trustKeys: []string{p}}).keys()
			if err != nil || len(keys) != 1 {
				t.Errorf("%s: %d keys, err %v", p, len(keys), err)
			}
		}
	})
	t.Run("key file in a sticky folder", func(t *testing.T) {
		dir, file := setup(t, os.ModeSticky|0o777, 0o444, -1)
		if _, err := (&policyFlags{trustKeys: []string{file}}).keys(); err != nil {
			t.Errorf("a key file of ours in a sticky folder: %v", err)
		}
		if _, err := (&policyFlags{trustKeys: []string{dir}}).keys(); err == nil {
			t.Error("a sticky 1777 trust folder was accepted: anyone can add a key to it")
		}
	})
}
