// Package vm is vmcred's QEMU/TCG end-to-end suite: real kernels boot real
// firmware tables, and the real agent reads them.
//
// Tier 1 boots a busybox initramfs whose /init (init.sh) runs
// `vmcred-guest load` and checks the credstore, on x86_64 (q35, microvm)
// and aarch64 (virt: through edk2 with SMBIOS, or directly with fw_cfg);
// tier 2 switches from that initramfs into debootstrapped Debian images
// (bookworm, trixie, sid: systemd 252, 257 and the newest Debian has) and
// checks, per version, what systemd imports and what services receive
// through LoadCredential=, what PID 1 sends to vmm.notify_socket, and the
// agent's share of the boot (two timing boots under -icount, with and
// without vmcred; integration/logs/boot-times.md). QEMU gets exactly the
// arguments `vmcred-host pack --print0` printed. Verdicts come from
// "VMCRED-CASE PASS" / "VMCRED-CASE FAIL reason" lines on the serial console;
// each case's console is kept in integration/logs/CASE.log.
//
// The tests build only with the vmtest tag and need what setup.sh prepares:
//
//	integration/vm/setup.sh [--tier1]
//	go test -tags vmtest -count=1 ./integration/vm/...
//
// Without that they skip with a hint, or fail when CI=true. Nothing here
// opens an AF_VSOCK socket on the machine running the tests: vsock is used
// only inside the guests, over vsock_loopback (CID 1). The session case
// (TestTier1Session) runs both ends in one guest: vmcred-guest agent on
// vsock port 730, and vmcred-host push, with the sources and a test-only
// signing key in the initramfs, dialing vsock:1:730.
package vm
