// Package nixosmodules tests the NixOS modules in this folder (host.nix,
// guest.nix, package.nix, examples/) and ../flake.nix offline: every .nix
// file parses; the modules, evaluated with nix-instantiate the way a real
// NixOS host evaluates them (nixpkgs' real lib and microvm.nix's real host
// module, guest module and runner, vendored in tests/third_party/, through
// tests/harness.nix and tests/guest-harness.nix), render the expected
// microvm@ drop-ins, microvm-run scripts and guest units; the generated
// extraArgsScript runs as microvm.nix's runner runs it; the example covers
// the seed's setup; package.nix's vendorHash matches go.mod. The clan
// service (clan/) is evaluated by clan-core's own service evaluation and
// vars module (tests/clan.nix) and its generator scripts are run for real
// (clan_test.go).
//
// Tests only; nothing imports it. Without nix-instantiate the tests skip
// with a hint, except under CI=true, where they fail.
package nixosmodules
