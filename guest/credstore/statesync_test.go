package credstore

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStateSyncFollowsFilesystem: the state file is fsynced (file and
// directory) only where that means something. On tmpfs, as /run/vmcred is
// at boot, writeState spares the three system calls, as syncStore does
// for the store; on a disk it keeps them, and either way the state is
// written and read back whole.
func TestStateSyncFollowsFilesystem(t *testing.T) {
	shm, disk := shmDir(t), persistentDir(t)
	for _, tc := range []struct {
		name, stateDir string
		allowDisk      bool
		wantInMemory   bool
	}{
		{"state beside the store on tmpfs", filepath.Join(shm, "st"), false, true},
		{"state on a disk, store on tmpfs", filepath.Join(disk, "st"), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := filepath.Join(shm, "cs-"+filepath.Base(filepath.Dir(tc.stateDir)))
			opts := Options{StatePath: filepath.Join(tc.stateDir, "credstore.state"), AllowPersistent: tc.allowDisk}
			s := openStore(t, store, opts)
			if s.stateInMemory != tc.wantInMemory {
				t.Errorf("stateInMemory = %v, want %v", s.stateInMemory, tc.wantInMemory)
			}
			mustReplace(t, s, entries("a", "value-a"))
			st, err := s.readState()
			if err != nil {
				t.Fatal(err)
			}
			if got := st.names(); len(got) != 1 || got[0] != "a" {
				t.Errorf("state records %q, want [a]", got)
			}
			if _, err := os.Stat(opts.StatePath); err != nil {
				t.Error(err)
			}
		})
	}
}
