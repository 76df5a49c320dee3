# STAND-IN for nixpkgs' nixos/modules/misc/assertions.nix: the same two
# options with the same types. Real NixOS fails system.build.toplevel on a
# failed assertion and prints the warnings; the test harness
# (tests/harness.nix) reports both instead, so that tests can check the
# messages.
{ lib, ... }:
{
  options = {
    assertions = lib.mkOption {
      type = lib.types.listOf lib.types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = lib.mkOption {
      internal = true;
      default = [ ];
      type = lib.types.listOf lib.types.str;
    };
  };
}
