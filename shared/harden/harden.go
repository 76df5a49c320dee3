// Package harden hardens the process of a vmcred command that handles
// secrets, at the start of main, before any secret is read: the process is
// made non-dumpable and its core size limit set to 0.
//
// What that buys (Linux): no core dump of a process that holds secrets,
// even when it crashes; and /proc/PID/mem, /proc/PID/environ and ptrace
// closed to every other process without CAP_SYS_PTRACE, the same uid
// included (the kernel's ptrace access check requires a dumpable target).
// A hypervisor started by `vmcred-host run` gets its own dumpable flag back
// at exec (the kernel resets it), but inherits the core limit of 0: it holds
// the same secrets.
//
// Not done: mlock. The values also sit in the page cache of their source
// files and in the hypervisor's memory, which vmcred cannot lock;
// mlockall(MCL_FUTURE) makes every Go heap growth fail once RLIMIT_MEMLOCK
// (8 MiB by default since Linux 5.16, 64 KiB before) is reached, which
// crashes the runtime; and mlock of single buffers misses the copies Go
// makes. vmcred keeps secrets in memory for as short a time as it can
// instead: buffers are wiped once handed over (credential.Secret.Wipe).
//
// This is the one package under shared/ that makes system calls (see
// integration/deps_test.go): both binaries call it, and it imports nothing
// of host/ or guest/. It never logs.
package harden
