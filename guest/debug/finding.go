package debug

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/vmcred/vmcred/guest/agent"
	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/manifest"
)

// Severity says how much a Finding matters.
type Severity string

// Severities, worst first.
const (
	// SeverityError: a service gets a wrong secret or none, or the check
	// itself could not run.
	SeverityError Severity = "error"
	// SeverityWarning: things work, but not as vmcred intends.
	SeverityWarning Severity = "warning"
	// SeverityInfo: worth knowing; nothing to fix unless it surprises you.
	SeverityInfo Severity = "info"
)

func (s Severity) rank() int {
	switch s {
	case SeverityError:
		return 0
	case SeverityWarning:
		return 1
	}
	return 2
}

// Finding is one problem a debug command found and what to do about it, in
// a sentence. Code is stable (scripts and tests match on it; SCHEMA.md
// lists them all); Message and Fix are for people and may change. Neither
// ever holds a value.
type Finding struct {
	Code       string   `json:"code"`
	Severity   Severity `json:"severity"`
	Credential string   `json:"credential,omitempty"`
	Message    string   `json:"message"`
	Fix        string   `json:"fix"`
}

// Finding codes. SCHEMA.md describes each.
const (
	CodeStatusMissing    = "status-missing"
	CodeStatusUnreadable = "status-unreadable"
	CodeLoadFailed       = "load-failed"
	CodeLoadProblem      = "load-problem"
	// CodeRotationConsumer: a rotation's new set is in place, but a
	// service that uses a changed credential did not come back.
	CodeRotationConsumer     = "rotation-consumer-failed"
	CodeManifestMissing      = "manifest-missing"
	CodeManifestUnknownKey   = "manifest-unknown-key"
	CodeManifestBadSignature = "manifest-bad-signature"
	CodeManifestUnsigned     = "manifest-unsigned"
	CodeManifestExpired      = "manifest-expired"
	CodeManifestWrongVM      = "manifest-wrong-vm"
	CodeManifestNoVM         = "manifest-no-vm"
	CodeManifestReplayed     = "manifest-replayed"
	CodeManifestInvalid      = "manifest-invalid"
	CodeNoTrustKeys          = "no-trust-keys"
	CodeCredentialMissing    = "credential-missing"
	CodeCredentialMismatch   = "credential-mismatch"
	CodeCredentialUnlisted   = "credential-unlisted"
	CodeCredentialUnknown    = "credential-unknown"
	CodeCredentialUnexpected = "credential-unexpected"
	CodeChannelFetch         = "channel-fetch-failed"
	CodeChannelReport        = "channel-report-failed"
	CodeSystemdTruncated     = "systemd-truncated"
	CodeSystemdDiffers       = "systemd-differs"
	CodeSystemdDropped       = "systemd-dropped"
	CodeSystemdAbsent        = "systemd-absent"
	CodeServedNone           = "served-none"
	CodeServedShadowed       = "served-shadowed"
	CodeCredstoreMissing     = "credstore-missing"
	CodeCredstoreUnreadable  = "credstore-unreadable"
	CodeCredstoreFileMissing = "credstore-file-missing"
	CodeCredstoreMismatch    = "credstore-mismatch"
	CodeCredstoreInsecure    = "credstore-insecure"
	CodeCredstorePersistent  = "credstore-persistent"
	CodeCredstoreExtra       = "credstore-extra"
	CodeDMIMissing           = "dmi-missing"
	CodeLoadWaiting          = "load-waiting"
	CodeFwCfgMissing         = "fw-cfg-missing"
	CodeSourceDamaged        = "source-damaged"
	CodeSourceUnreadable     = "source-unreadable"
	CodeSourceNote           = "source-note"
	CodeStringsSkipped       = "strings-skipped"
)

// Advice that several findings share.
const (
	fixRestartLoad  = "fix the cause, then run `systemctl restart vmcred-guest`; services that Require= it start once it succeeds"
	fixPushAgain    = "fix the cause, then push again from the host (`vmcred-host push`; on NixOS `systemctl start vmcred-push@NAME`): the agent keeps listening, no restart needed"
	fixRewrite      = "`vmcred-host push` from the host writes it again (a QEMU guest whose firmware carries it: `systemctl restart vmcred-guest`)"
	fixRunAsRoot    = "run the command as root (sudo): the DMI table, fw_cfg files, the status file and the credstore are root's alone"
	fixVerifiedMode = "pack with `vmcred-host pack --mode verified` (the default) so systemd does not import it and LoadCredential= gets the agent's verified copy from the credstore"
	fixChannel      = "the host's session brings it: run `vmcred-host push` for this VM (or `run --connect`; on NixOS, `systemctl start vmcred-push@NAME`) and read what it says; `journalctl -b -u vmcred-guest` here shows each session"
	fixDMISysfs     = "if the hypervisor passes SMBIOS OEM strings, load the dmi-sysfs kernel module (`modprobe dmi-sysfs`, CONFIG_DMI_SYSFS); with no firmware carrier (Firecracker, cloud-hypervisor), run `vmcred-guest agent` and let `vmcred-host push` bring everything"
)

// sortFindings puts errors first, then warnings, then notes, keeping the
// order they were found in otherwise, and drops exact repeats.
func sortFindings(fs []Finding) []Finding {
	out := make([]Finding, 0, len(fs))
	seen := map[Finding]bool{}
	for _, f := range fs {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	slices.SortStableFunc(out, func(a, b Finding) int { return a.Severity.rank() - b.Severity.rank() })
	return out
}

// writeFindings renders findings for a person, wrapped to Width:
//
//	ERROR   tls-key: systemd cut it to 4091 of 5000 bytes in …
//	        fix: pack with `vmcred-host pack --mode verified` …
func writeFindings(w io.Writer, fs []Finding) {
	if len(fs) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Problems and what to do:")
	for _, f := range fs {
		msg := f.Message
		if f.Credential != "" {
			msg = printable(f.Credential, 40) + ": " + msg
		}
		wrap(w, fmt.Sprintf("%-7s ", strings.ToUpper(string(f.Severity))), msg)
		wrap(w, "        fix: ", f.Fix)
	}
}

// keyIDIn returns the first key ID in msg: 16 lower-case hex digits after
// "ed25519 key ", as manifest.KeyError texts have it; "" if there is none.
// (A regexp compiled at package init cost 0.1 ms of every start of the
// guest binary, the boot service's included.)
func keyIDIn(msg string) string {
	const prefix = "ed25519 key "
	for rest := msg; ; {
		i := strings.Index(rest, prefix)
		if i < 0 {
			return ""
		}
		rest = rest[i+len(prefix):]
		if len(rest) >= 16 && isLowerHex(rest[:16]) {
			return rest[:16]
		}
	}
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// manifestFinding turns a refused manifest (an error from manifest.Open or
// Manifest.Check, or the text the agent recorded of one) into a finding.
// It matches the manifest package's sentinel texts, which every error it
// returns contains, so it works on a live error and on the status file's
// strings alike. trustFrom names where the trusted keys came from.
func manifestFinding(msg, trustFrom string) Finding {
	keyID := keyIDIn(msg)
	if trustFrom == "" {
		trustFrom = "/etc/vmcred/trusted.d (the --trust-key folder)"
	}
	f := Finding{Code: CodeManifestInvalid, Severity: SeverityError, Credential: agent.ManifestName, Message: msg,
		Fix: "repack on the host with a vmcred-host that matches this agent's version and restart the VM"}
	switch {
	case strings.Contains(msg, manifest.ErrUnknownKey.Error()):
		f.Code = CodeManifestUnknownKey
		f.Message = fmt.Sprintf("signed by ed25519 key %s, which is not among the trusted keys", orNA(keyID))
		f.Fix = fmt.Sprintf("copy the host's public key (PREFIX.pub from `vmcred-host keygen`, key ID %s) into %s, or sign (push or pack --sign-key) with a key the guest already trusts", orNA(keyID), trustFrom)
	case strings.Contains(msg, manifest.ErrBadSignature.Error()):
		f.Code = CodeManifestBadSignature
		f.Message = fmt.Sprintf("the signature by ed25519 key %s does not verify: the manifest changed after it was signed", orNA(keyID))
		f.Fix = "repack on the host with `vmcred-host pack --sign-key` and restart the VM; if it happens again, something between the host and the guest alters the firmware strings"
	case strings.Contains(msg, manifest.ErrUnsigned.Error()):
		f.Code = CodeManifestUnsigned
		f.Message = "the manifest is unsigned but trusted keys are configured"
		f.Fix = "pack with `vmcred-host pack --sign-key KEY` on the host, or remove the guest's trust keys to accept digests only"
	case strings.Contains(msg, manifest.ErrExpired.Error()):
		f.Code = CodeManifestExpired
		f.Fix = "if the guest clock is wrong (`timedatectl`), fix it first; then push again (`vmcred-host push`), or restart the VM so the host packs a fresh manifest"
	case strings.Contains(msg, manifest.ErrWrongVM.Error()):
		f.Code = CodeManifestWrongVM
		f.Fix = "give the host this VM's name (`vmcred-host push --vm NAME`, `pack --vm NAME`), or correct the guest's --vm (/etc/vmcred/vm-name)"
	case strings.Contains(msg, "was not told its VM name") || strings.Contains(msg, agent.ErrSessionNoVM.Error()):
		f.Code = CodeManifestNoVM
		f.Fix = "pass --vm NAME (the name `vmcred-host pack --vm` used) or write it to /etc/vmcred/vm-name, as the agent is given it; --allow-any-vm accepts a manifest for any VM where the agent does too"
	case strings.Contains(msg, agent.ErrSessionInFirmware.Error()):
		f.Code = CodeManifestReplayed
		f.Fix = "a manifest signed for a host session was copied into firmware: find what adds it; the host sends session manifests only by `vmcred-host push` or `run`"
	case strings.Contains(msg, agent.ErrNotThisSession.Error()), strings.Contains(msg, "is older than the"), strings.Contains(msg, agent.ErrOlderGeneration.Error()):
		f.Fix = "nothing to do if the host's last push succeeded (a replayed or stale session was refused); otherwise push again: each push signs this agent's fresh challenge and the next generation"
	case strings.Contains(msg, "no "+agent.ManifestName+" credential"):
		f.Code = CodeManifestMissing
		f.Message = "no " + agent.ManifestName + " credential arrived: nothing to verify the others against"
		f.Fix = "pack the VM with `vmcred-host pack`, which adds the manifest; for guests fed by other tools, pass --allow-unverified to vmcred-guest load"
	}
	return f
}

// missingFinding is a credential the manifest lists that did not arrive.
func missingFinding(name string, size uint64, delivery string) Finding {
	f := Finding{Code: CodeCredentialMissing, Severity: SeverityError, Credential: name,
		Message: fmt.Sprintf("the manifest lists it (%d bytes, by %s) but it did not arrive", size, delivery)}
	switch delivery {
	case "channel":
		f.Fix = fixChannel
	case "fwcfg":
		f.Fix = "check that QEMU got the -fw_cfg argument vmcred-host pack printed and that the qemu_fw_cfg module is loaded (`modprobe qemu_fw_cfg`)"
	default:
		f.Fix = "check that the hypervisor got every -smbios argument vmcred-host pack printed and that /sys/firmware/dmi exists in the guest (`modprobe dmi-sysfs`); if the table was cut, pack with --overflow channel"
	}
	return f
}

// mismatchFinding is a credential whose value differs from the manifest.
func mismatchFinding(name, detail string) Finding {
	return Finding{Code: CodeCredentialMismatch, Severity: SeverityError, Credential: name, Message: detail,
		Fix: "the value changed between `vmcred-host pack` and boot: repack and restart the VM; find what else writes OEM strings or fw_cfg entries of that name"}
}

// unlistedFinding is a credential that arrived without being in the
// manifest; fails says the policy fails the set for it (vmcred's own
// prefix, outside a session).
func unlistedFinding(name string, fails bool) Finding {
	if fails {
		return Finding{Code: CodeCredentialUnlisted, Severity: SeverityError, Credential: name,
			Message: "arrived under vmcred's prefix but is not in the manifest",
			Fix:     "something other than `vmcred-host pack` adds OEM strings in vmcred's namespace: find and remove it, or add the credential to the pack"}
	}
	return Finding{Code: CodeCredentialUnlisted, Severity: SeverityWarning, Credential: name,
		Message: "not in the manifest, so the agent did not verify or expose it (systemd may still import it itself)",
		Fix:     "add it to `vmcred-host pack` (--cred or --static) to have it verified; if another tool adds it on purpose (microvm.nix sets vmm.notify_socket), nothing to do"}
}

// systemdFinding turns the cross-check of one credential against
// /run/credentials/@system into a finding; "match" gives none.
func systemdFinding(name, status string, size uint64, systemSize int64, dir string) (Finding, bool) {
	switch status {
	case "truncated":
		return Finding{Code: CodeSystemdTruncated, Severity: SeverityError, Credential: name,
			Message: fmt.Sprintf("systemd cut it to %d of %d bytes in %s (systemd 252–256 read only 4 KiB of OEM strings), and LoadCredential=%s hands services that short copy, because @system is searched before the credstore", systemSize, size, dir, name),
			Fix:     fixVerifiedMode}, true
	case "differs":
		return Finding{Code: CodeSystemdDiffers, Severity: SeverityError, Credential: name,
				Message: fmt.Sprintf("%s holds a different %s (%d bytes, manifest %d), and LoadCredential= finds it before the credstore", dir, name, systemSize, size),
				Fix:     "remove the other source of that name (systemd.set_credential= on the kernel command line, a -fw_cfg or OEM string from another tool), or " + fixVerifiedMode},
			true
	case "dropped":
		return Finding{Code: CodeSystemdDropped, Severity: SeverityInfo, Credential: name,
			Message: "systemd did not import it (systemd 252–256 read only 4 KiB of OEM strings); LoadCredential= falls back to the verified copy in the credstore",
			Fix:     "nothing to do; pack with --mode verified to stop systemd trying"}, true
	}
	return Finding{}, false
}

// skippedFindings groups skipped strings by reason, one finding each.
func skippedFindings(skipped []Skipped) []Finding {
	type group struct {
		which []string
		n     int
	}
	var order []string
	groups := map[string]*group{}
	for _, s := range skipped {
		if s.Reason == "not a credential string" {
			continue // another vendor's OEM string: normal
		}
		g := groups[s.Reason]
		if g == nil {
			g = &group{}
			groups[s.Reason] = g
			order = append(order, s.Reason)
		}
		g.n += max(s.Count, 1)
		if s.Count > 0 {
			g.which = append(g.which, fmt.Sprintf("%d more not named", s.Count))
			continue
		}
		w := s.Source
		if s.Index != nil {
			w = fmt.Sprintf("%s #%d", s.Source, *s.Index)
		}
		if s.Name != "" {
			w += " " + printable(s.Name, 40)
		}
		g.which = append(g.which, w)
	}
	var out []Finding
	for _, reason := range order {
		g := groups[reason]
		f := Finding{Code: CodeStringsSkipped, Severity: SeverityWarning,
			Message: fmt.Sprintf("%s skipped, %s: %s", plural(g.n, "string"), reason, strings.Join(g.which, ", "))}
		switch {
		case strings.Contains(reason, "set twice"):
			f.Fix = "two strings or sources set the same name and the first wins (fw_cfg before SMBIOS, as in systemd): remove the duplicate"
		case strings.Contains(reason, "name"):
			f.Fix = "rename the credential: 1–255 bytes of printable ASCII without '/' or ':'"
		case strings.Contains(reason, "base64"):
			f.Fix = "the string was damaged or cut on its way (the hypervisor's argument quoting, a table over its limit): compare with what `vmcred-host pack` printed"
		case strings.Contains(reason, "1 MiB"):
			f.Fix = "systemd takes at most 1 MiB of credentials from firmware: move big ones to the channel (`vmcred-host pack --overflow channel`)"
		default:
			f.Fix = "fix the string on the host; `vmcred-host pack` writes only well-formed ones"
		}
		out = append(out, f)
	}
	return out
}

// sourceFindings turns the firmware sources' notes and faults into
// findings. A missing kernel interface (a source's Hint) is none: a guest
// without SMBIOS or fw_cfg has no firmware carrier, and the host's session
// brings everything (issue 18, item 9). Verify says so when it finds no
// source and nothing else to check against, and a credential the manifest
// lists by SMBIOS or fw_cfg that did not arrive names the module.
func sourceFindings(sources []firmware.Status) []Finding {
	var out []Finding
	for _, s := range sources {
		for _, n := range s.Notes {
			switch {
			default:
				out = append(out, Finding{Code: CodeSourceNote, Severity: SeverityInfo, Message: n,
					Fix: "nothing to do if every credential arrived; otherwise compare with what `vmcred-host pack` printed"})
			}
		}
		if s.Fault == "" {
			continue
		}
		if strings.Contains(s.Fault, "permission denied") {
			out = append(out, Finding{Code: CodeSourceUnreadable, Severity: SeverityError, Message: s.Fault, Fix: fixRunAsRoot})
			continue
		}
		out = append(out, Finding{Code: CodeSourceDamaged, Severity: SeverityError, Message: s.Fault,
			Fix: "the table was cut or damaged: check the hypervisor's -smbios arguments; a table over 64 KiB needs `vmcred-host pack --overflow channel`"})
	}
	return out
}
