// Package consumers restarts (or reloads) the running services that use a
// rotated credential, and reports how each came back.
//
// After the agent has verified generation N+1 and swapped the credstore
// (credstore.Store.Rotate), the running services still hold generation N:
// systemd copies a credential into a unit's /run/credentials/UNIT when the
// unit starts, and never again (a reload refreshes it only with systemd
// 260's RefreshOnReload=credentials). [Apply] asks systemd over D-Bus for
// the active service units whose LoadCredential=, LoadCredentialEncrypted=
// or ImportCredential= (systemd 254 and later; systemd 252 has no such
// property, and a unit file's ImportCredential= line is ignored there) name
// a changed credential, restarts or reloads each per the credential's
// policy, and waits until it is active again, within the caller's context
// deadline. [Find] is the same question without acting. Only service
// units are considered: sockets, mounts and swaps can take credentials too
// (for their Exec*= commands), but restarting them is not a rotation's
// business.
//
// The agent calls it through [Rotator] (its agent.Rotator), once Rotate
// has returned, with a context whose deadline is the session's (the
// host's --timeout, carried in the signed manifest):
//
//	rot := consumers.Rotator{Connect: consumers.ConnectSystemd,
//		Options: consumers.Options{Exclude: []string{"vmcred-guest.service"}}}
//	units, err := rot.Rotated(ctx, changes) // changes: the store's Added, Changed, Removed
//
// err is nil when every unit came back; otherwise it names each that did
// not. The outcomes (unit, action, credentials, result, error: names only,
// never a value) go into the agent's report as they are.
//
// # README draft: rotating a secret without a reboot
//
// `vmcred-host push` sends generation N+1 to the running agent. The agent
// verifies all of it first (signature, VM name, generation higher than
// the one it holds); a push that fails verification changes nothing and
// restarts nothing. It then replaces the credstore all or nothing: it
// builds the new set in a new directory next to /run/credstore (unchanged
// credentials are hard links to the same files, so they keep their inode;
// an admin's own files there are carried over as they are; credentials
// that are no longer delivered are left out) and exchanges the two
// directories in one step (renameat2 RENAME_EXCHANGE). Anyone who opens
// /run/credstore sees either the whole old or the whole new set, never a
// mix, and a failure before the exchange leaves the old set byte for
// byte. systemd reads each credential by path when a unit starts, so a
// unit that happens to start during the exchange could still take one
// credential from each generation: the agent restarts every active or
// activating consumer of a changed credential after the exchange, which
// ends that too.
//
// Then, for each credential that was added, changed or removed, it finds
// the active services that use it (LoadCredential=NAME,
// LoadCredential=ID:NAME, LoadCredential=ID:/run/credstore/NAME,
// LoadCredential=ID:/run/credstore, LoadCredentialEncrypted= likewise, and
// on systemd 254 and later ImportCredential= globs) and applies the
// credential's policy, set on the host: restart (the default; the only way
// a unit gets the new value before systemd 260), reload (ExecReload=; the
// new value arrives only with RefreshOnReload=credentials on systemd 260,
// or for a service that reads /run/credstore itself), or none. A unit that
// uses several changed credentials gets the strongest of their policies,
// once. Services whose credentials did not change keep running (same main
// PID). The agent never restarts itself.
//
// The report lists the generation and, per unit: its name, the action
// (restart, reload or none), the changed credentials it uses, and the
// result: "active" when it came back, "skipped" for policy none, or what
// went wrong ("failed" or "inactive" when it did not come back, a job
// result such as "canceled", "timeout" at the push deadline, "not
// attempted" for units after the deadline). Any unit that did not come back
// makes the report failed and `vmcred-host push` exit 1, naming it; the
// new credentials stay in place (the push is not rolled back: the old
// secret may be the one being revoked).
//
// The agent's unit must not make /run/credstore a mount point of its own
// (the shipped unit has no mount namespace at all): the new directory is
// made beside the store, and a store
// that is a mount point in the agent's namespace (ReadWritePaths=
// /run/credstore, RuntimeDirectory=credstore under ProtectSystem=strict)
// cannot be exchanged (EBUSY). See guest/credstore/ROTATION.md.
package consumers
