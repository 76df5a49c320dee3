// Package channel is the host's receiver for guest PID 1's own
// vmm.notify_socket messages (systemd ≥ 254, shared/notify): the server
// `vmcred-host serve` puts on a VM's vsock port, or on the Unix socket a
// hybrid-vsock VMM forwards that port to. PID 1 connects, writes
// "READY=1\nSTATUS=…", half-closes and, from v256, waits for EOF; the
// server reads to EOF and closes at once; since cloud-hypervisor ≤ 52 and
// vhost-device-vsock never pass the half-close on, a short idle timeout
// ends the message as well.
//
// It carries no credential and decides no readiness: since DESIGN §8 the
// host dials the guest agent (package push), and only that session says a
// VM is ready. What PID 1 says here is the guest's own boot progress, for
// the log; any guest process can connect and write "READY=1".
//
// Everything is bounded: connections (Config.MaxConns; the rest are closed
// at once), notify messages (4096 bytes), and time (a deadline on every
// read). A peer that breaks a rule is dropped with an Events.Dropped call
// naming its address, and the server keeps serving.
//
// The transports are plain net.Listener and net.Conn: Listen opens a Unix
// socket (never an abstract one) or, through github.com/mdlayher/vsock, an
// AF_VSOCK socket; tests use Unix sockets only. This package is for host
// code (host/cmd/vmcred-host). It does not log: it reports through Events.
package channel
