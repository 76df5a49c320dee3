// Package plan decides, before any hypervisor starts, how each credential
// reaches a micro-VM: as an SMBIOS type-11 OEM string, as a QEMU fw_cfg
// file, or over vmcred's vsock channel; and checks every limit on the way,
// so that nothing is truncated or dropped silently at boot.
//
// The planner sees names, sizes and whether a value is secret; it never sees
// a value. Its output, a Plan, is safe to print, log and marshal as JSON.
// Package host/emit turns a Plan plus the values into hypervisor arguments
// and payload files.
//
// # Deliveries by hypervisor
//
//   - qemu (q35/pc): every credential is an OEM string in QEMU's one type-11
//     structure, read from a 0400 file (-smbios type=11,path=FILE); with
//     Inline, non-secret strings go on the command line (value=), and
//     secrets only with InlineSecrets.
//   - qemu-microvm: the microvm machine type builds no SMBIOS tables, so
//     every credential is a fw_cfg file opt/io.systemd.credentials/NAME.
//     fw_cfg names are at most 55 bytes, which leaves 28 for NAME; and QEMU's
//     fw_cfg file slots (0x20 by default) are shared with its own files, so
//     at most MaxFwCfgFiles are used.
//   - cloud-hypervisor: its command line (--platform oem_strings=[...]) is
//     readable by every local user through /proc/PID/cmdline, so only
//     non-secret strings go there; secrets go by channel, or, with the REST
//     API (CHAPI), every string goes in the vm.create request.
//   - firecracker: no SMBIOS and no fw_cfg; everything goes by channel.
//   - dmi: a table file laid out as QEMU lays it out, for simulated VMs.
//
// # Limits
//
// Checked in this order, each failure naming the credential, its size and
// the limit: systemd's 1 MiB per credential (any delivery) and 1 MiB in
// total over the firmware deliveries (CREDENTIAL_SIZE_MAX and
// CREDENTIALS_TOTAL_SIZE_MAX); at most 255 strings in the one type-11
// structure; the SMBIOS table at most 65535 bytes (the 32-bit entry point's
// u16 length, QEMU's "SMBIOS 2.1 table length exceeds" check) minus a
// reserve for the hypervisor's own structures; the fw_cfg name length; and
// the fw_cfg slot count. The extra strings (the manifest, later
// vmm.notify_socket) count in every limit.
//
// # Overflow
//
// With OverflowChannel, what does not fit goes to the channel instead of
// failing: a credential that cannot be carried at all (a fw_cfg name over 28
// bytes, a name cloud-hypervisor's parser would mangle) moves first; then,
// while an aggregate limit is exceeded, the largest movable credential (by
// the bytes it costs that limit; ties: the one given later) moves, until
// everything fits. Extra strings never move. What goes by channel is sent
// by the host's session (vmcred-host push or run), not by the hypervisor.
//
// The package is pure (no OS access) and may be imported by host packages.
package plan
