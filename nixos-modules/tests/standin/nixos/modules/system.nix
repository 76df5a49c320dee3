# STAND-IN for the parts of NixOS that build the system: nixpkgs'
# nixos/modules/system/activation/top-level.nix (system.build.toplevel),
# nixos/modules/system/boot/kernel.nix (boot.kernelPackages, boot.kernelParams,
# boot.kernelModules …), nixos/modules/system/boot/stage-1.nix
# (system.build.initialRamdisk, boot.initrd.*), nixos/modules/config/
# system-path.nix (environment.systemPackages) and nixos/modules/system/etc/
# etc.nix (environment.etc). Option names and types as there; what they build
# is a made-up store path, never built (see ../../pkgs.nix).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  listOfStr = mkOption { type = types.listOf types.str; default = [ ]; };
in
{
  options = {
    boot.kernelPackages = mkOption {
      type = types.raw;
      default = {
        kernel = pkgs.linux // { version = "6.12.0"; modDirVersion = "6.12.0"; };
      };
    };
    boot.kernelParams = mkOption { type = types.listOf types.str; default = [ ]; };
    boot.kernelModules = listOfStr;
    boot.blacklistedKernelModules = listOfStr;
    boot.initrd.kernelModules = listOfStr;
    boot.initrd.availableKernelModules = listOfStr;

    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, config, ... }: {
        # etc.nix: a `text` entry's source is that text in the store.
        config.source = lib.mkIf (config.text != null) (lib.mkDefault (pkgs.writeText (baseNameOf name) config.text));
        options = {
          enable = mkOption { type = types.bool; default = true; };
          target = mkOption { type = types.str; default = name; };
          text = mkOption { type = types.nullOr types.lines; default = null; };
          source = mkOption { type = types.path; };
          mode = mkOption { type = types.str; default = "symlink"; };
          user = mkOption { type = types.str; default = "+0"; };
          group = mkOption { type = types.str; default = "+0"; };
        };
      }));
    };

    system.build = mkOption {
      type = types.submoduleWith { modules = [{ freeformType = types.lazyAttrsOf types.raw; }]; };
      default = { };
    };
    system.boot.loader.kernelFile = mkOption { type = types.str; default = pkgs.stdenv.hostPlatform.linux-kernel.target or "bzImage"; };
    system.boot.loader.initrdFile = mkOption { type = types.str; default = "initrd"; };
    system.nixos.label = mkOption { type = types.str; default = "standin"; };
    system.stateVersion = mkOption { type = types.str; default = "25.11"; };
  };

  config.system.build = {
    toplevel = pkgs.mkPackageStandIn "nixos-system-${config.networking.hostName}";
    initialRamdisk = pkgs.mkPackageStandIn "initrd-linux";
  };
}
