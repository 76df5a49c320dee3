package main

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/shared/cli"
)

// TestFinding4StatusFolderOwnerAndMode is finding 4 of issue 17: the agent
// wrote status.json into whatever folder it was given, through one fixed
// temporary name opened without O_EXCL, so a 0777 status folder let
// another user own status.json and rewrite it ("Summary forged" printed by
// `status`). Now the agent refuses a folder that is not its own and
// private (as the credstore's is checked), writes through a random
// O_EXCL temporary name, and `status` refuses a report someone else could
// have written.
func TestFinding4StatusFolderOwnerAndMode(t *testing.T) {
	const nobody = 65534
	root := os.Geteuid() == 0
	forged := []byte(`{"outcome":"ready","summary":"Summary forged","policy":"signature","credstore":"/run/credstore","credentials":[],"skipped":[],"sources":[],"agent_version":"x","started_at":"2026-01-02T03:04:05Z","timings_ms":{"read":0,"verify":0,"fetch":0,"write":0,"total":0}}`)
	newLoad := func(t *testing.T) (*tree, string, agent.Config) {
		tr := build(t, "no-status", fixedValue)
		dir := tr.path("run/vmcred")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		return tr, dir, tr.loadConfig([]ed25519.PublicKey{key(1).Public().(ed25519.PublicKey)})
	}
	status := func(tr *tree) result { return run(tr.defaults(), "status") }

	t.Run("0777 status folder is refused", func(t *testing.T) {
		tr, dir, cfg := newLoad(t)
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := agent.Load(cfg)
		if err == nil || cli.CodeOf(err) != cli.ExitIO {
			t.Fatalf("load into a 0777 status folder: err = %v (exit %d), want exit 3", err, cli.CodeOf(err))
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("the refused load left %d file(s) in the folder", len(ents))
		}
		if ents, _ := os.ReadDir(tr.path("run/credstore")); len(ents) != 0 {
			t.Errorf("the refused load wrote %d credential(s)", len(ents))
		}
		// The attacker writes the report instead.
		p := filepath.Join(dir, agent.StatusFile)
		if err := os.WriteFile(p, forged, 0o666); err != nil {
			t.Fatal(err)
		}
		if root {
			if err := os.Chown(p, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		r := status(tr)
		if bytes.Contains(r.stdout, []byte("forged")) || r.code != cli.ExitIO {
			t.Errorf("status showed a report in a 0777 folder (exit %d):\n%s", r.code, r.stdout)
		}
	})

	t.Run("planted temporary names are not used", func(t *testing.T) {
		tr, dir, cfg := newLoad(t)
		outside := tr.path("outside")
		if err := os.WriteFile(outside, []byte("untouched"), 0o600); err != nil {
			t.Fatal(err)
		}
		// The old fixed name, as a symlink to a file the attacker wants
		// overwritten, and (as root) as a file the attacker owns.
		if err := os.Symlink(outside, filepath.Join(dir, ".status.json.tmp")); err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Load(cfg); err != nil {
			t.Fatalf("load with a planted symlink: %v", err)
		}
		if b, _ := os.ReadFile(outside); string(b) != "untouched" {
			t.Errorf("the symlink's target was written: %q", b)
		}
		if !root {
			return
		}
		planted := filepath.Join(dir, ".status.json.tmp")
		os.Remove(planted)
		if err := os.WriteFile(planted, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(planted, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Load(cfg); err != nil {
			t.Fatalf("load with a planted file: %v", err)
		}
		fi, err := os.Stat(filepath.Join(dir, agent.StatusFile))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() || fi.Mode().Perm() != 0o600 {
			t.Errorf("status.json is owned by uid %d, mode %#o: the attacker's planted file became the report", st.Uid, fi.Mode().Perm())
		}
	})

	t.Run("status refuses a report owned by another user", func(t *testing.T) {
		if !root {
			t.Skip("needs root to give the file to another uid")
		}
		tr, dir, _ := newLoad(t)
		p := filepath.Join(dir, agent.StatusFile)
		if err := os.WriteFile(p, forged, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		if r := status(tr); bytes.Contains(r.stdout, []byte("forged")) || r.code != cli.ExitIO {
			t.Errorf("status showed another user's report (exit %d):\n%s", r.code, r.stdout)
		}
	})
}
