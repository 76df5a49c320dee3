// Package channel is the host end of vmcred's channel: the server that
// `vmcred-host serve` and `vmcred-host run` put on a VM's vsock port (or on
// the Unix socket a hybrid-vsock VMM forwards that port to), and the
// serve-state file through which `vmcred-host pack` tells the server what
// to serve.
//
// One port carries two protocols (DESIGN.md §3):
//
//   - vmcred's own (shared/channel): the guest agent opens with Magic, sends
//     HELLO with the manifest's one-time token and boot nonce, receives the
//     credentials whose delivery is "channel" (read fresh from their sources
//     on the host, once per boot nonce), replies with its REPORT, and gets an
//     ACK;
//   - systemd's vmm.notify_socket messages (shared/notify): guest PID 1
//     (systemd ≥ 254) connects, writes "READY=1\nSTATUS=…", half-closes and,
//     from v256, waits for EOF. The server reads to EOF and closes at once;
//     since cloud-hypervisor ≤ 52 and vhost-device-vsock never pass the
//     half-close on, a short idle timeout ends the message as well.
//
// The first byte tells them apart: Magic starts with NUL, which no notify
// message may hold, and every notify message starts with a key byte.
//
// Everything is bounded: connections (Config.MaxConns; the rest are closed
// at once), frame sizes (shared/channel's per-type limits, checked before
// anything is allocated), notify messages (4096 bytes), and time (a
// deadline on every read and write). A peer that breaks a rule is dropped
// with an Events.Dropped call naming its address, and the server keeps
// serving.
//
// The token is a secret; the server holds only its SHA-256 and compares in
// constant time. No error, event or file of this package holds a
// credential value or the token.
//
// The transports are plain net.Listener and net.Conn: Listen opens a Unix
// socket or, through github.com/mdlayher/vsock, an AF_VSOCK socket; tests
// use Unix sockets only. This package is for host code
// (host/cmd/vmcred-host). It does not log: it reports through Events.
package channel
