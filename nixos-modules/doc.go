// Package nixosmodules tests the NixOS modules in this folder (host.nix,
// guest.nix, package.nix, examples/) offline: every .nix file parses; the
// modules, evaluated with nix-instantiate against the stub lib in tests/,
// produce the guest unit in guest/systemd/vmcred-guest.service, the host
// drop-ins and a runnable extraArgsScript; the example covers the seed's
// setup; package.nix's vendorHash matches go.mod.
//
// Tests only; nothing imports it. Without nix-instantiate the tests skip
// with a hint, except under CI=true, where they fail.
package nixosmodules
