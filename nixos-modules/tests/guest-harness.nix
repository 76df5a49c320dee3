# Evaluates a NixOS configuration with vmcred's guest module alone (no
# microvm.nix), the way a real NixOS evaluates it: nixpkgs' real
# lib.evalModules, the guest module as flake.nix exports it
# (nixosModules.guest), NixOS and pkgs stand-ins (standin/). For the tests of
# guest.nix's options; tests/harness.nix evaluates VMs under microvm.nix.
#
#   nix-instantiate --read-write-mode --store "$TMP/store" --eval --strict \
#     --json nixos-modules/tests/guest-harness.nix --arg module ./my-guest.nix
#
# Output: failedAssertions, warnings, units (every unit file: name -> text),
# etc ({ "<path under /etc>" = { text, source, mode } } for vmcred/…),
# kernelModules, initrdKernelModules.
{ module, system ? "x86_64-linux" }:
let
  lib = import ./nix-compat.nix;
  pkgs = import ./standin/pkgs.nix { inherit lib system; };
  nixpkgsInput = { inherit lib; outPath = toString ./standin; legacyPackages.${system} = pkgs; };
  vmcred = (import ../../flake.nix).outputs { self = vmcred // { outPath = toString ../..; }; nixpkgs = nixpkgsInput; };
  eval = import ./standin/nixos/lib/eval-config.nix {
    inherit lib pkgs system;
    modules = [ vmcred.nixosModules.guest module ];
  };
  cfg = eval.config;
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  inherit (cfg) warnings;
  units = cfg.systemd.unitFiles;
  etc = lib.mapAttrs (_: e: { inherit (e) text mode; source = if e.text == null then toString e.source else null; })
    (lib.filterAttrs (n: _: lib.hasPrefix "vmcred" n) cfg.environment.etc);
  kernelModules = cfg.boot.kernelModules;
  initrdKernelModules = cfg.boot.initrd.kernelModules;
}
