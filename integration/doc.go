// Package integration holds vmcred's end-to-end tests: the dependency rules
// between host, guest and shared; the simulated VM (a table file and Unix
// sockets) in the normal test run; and, behind the vmtest build tag, real
// QEMU guests under TCG.
package integration
