// Package credstore is the guest agent's view of a systemd credstore
// directory (by default /run/credstore): one regular file per credential,
// named after it, mode 0400, in a directory of mode 0700, owned by the agent.
// systemd's LoadCredential=NAME and ImportCredential= find the files there
// (the credstore directories are on PID 1's search path since v251).
//
// [Open] checks the directory (not a symlink, no group or other access, owned
// by the agent, on tmpfs or ramfs unless persistence is allowed) and takes an
// exclusive lock on it. [Store.Replace] installs a new set of credentials as
// close to all-or-nothing as a filesystem allows: every value is staged and
// fsynced before any file is renamed into place, each rename is atomic, and
// only files a previous run of the agent wrote are ever removed.
// [Store.Rotate] replaces the whole set as one step readers see all or
// nothing: it fills a new directory beside the store (unchanged files
// hard-linked, keeping their inode) and exchanges the two directories with
// renameat2(RENAME_EXCHANGE); ROTATION.md records what systemd reads and
// why. [List] is
// the read side for the debug command and labels each file the way
// `systemd-creds list` does.
//
// All writes go through an [os.Root] so a hostile name cannot escape the
// store. The package does not log; it returns errors that name the
// directory, file or credential and never contain a value.
//
// It touches the guest's filesystem and is Linux-only in practice: only
// guest packages (the vmcred-guest agent and its debug commands) may import
// it.
package credstore
