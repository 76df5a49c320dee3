# STAND-IN for the other NixOS options that microvm.nix's host and guest
# modules and the test configurations (examples/test-vm.nix, the seed's VM)
# set or read, declared by name so that a misspelt option still fails as it
# does on NixOS ("The option `…' does not exist"). Types are as in NixOS
# where a test looks at the value (networking.hostName, the nix.* flags
# microvm.nix's assertions read); elsewhere `anything`: nothing is built from
# them here. Each group names the NixOS module that declares it.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  any = mkOption { type = types.anything; default = { }; };
  bool = d: mkOption { type = types.bool; default = d; };
in
{
  options = {
    # nixos/modules/tasks/network-interfaces.nix
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    networking.hostId = mkOption { type = types.nullOr types.str; default = null; };
    networking.useNetworkd = bool false;
    networking.interfaces = any;
    # nixos/modules/services/networking/firewall.nix
    networking.firewall = any;
    # nixos/modules/tasks/filesystems.nix
    fileSystems = any;
    # nixos/modules/system/boot/loader/grub/grub.nix, stage-1, systemd/initrd,
    # tasks/swraid.nix, stage-2.nix
    boot.loader.grub.enable = bool true;
    boot.initrd.systemd.enable = bool false;
    boot.initrd.systemd.tpm2.enable = bool true;
    boot.swraid.enable = bool false;
    boot.postBootCommands = mkOption { type = types.lines; default = ""; };
    # nixos/modules/misc/documentation.nix, misc/nixpkgs.nix
    documentation.enable = bool true;
    nixpkgs.overlays = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    # nixos/modules/services/system/nix-daemon.nix, config/nix.nix
    nix.enable = bool true;
    nix.package = mkOption { type = types.package; default = { type = "derivation"; name = "nix"; outPath = "/nix/store/00000000000000000000000000000000-nix"; drvPath = "/nix/store/00000000000000000000000000000000-nix.drv"; out = { outPath = "/nix/store/00000000000000000000000000000000-nix"; }; }; };
    nix.optimise.automatic = bool false;
    nix.settings = mkOption { type = types.attrsOf types.anything; default = { auto-optimise-store = false; }; };
    # nixos/modules/security/*.nix, virtualisation/*.nix, hardware/ksm.nix
    security.pam.loginLimits = mkOption { type = types.listOf types.attrs; default = [ ]; };
    security.wrappers = any;
    security.virtualisation.flushL1DataCache = mkOption { type = types.nullOr types.str; default = null; };
    virtualisation.libvirtd.enable = bool false;
    virtualisation.rosetta.enable = bool false;
    hardware.ksm.enable = bool false;
    # nixos/modules/system/activation/activation-script.nix
    system.activationScripts = any;
    # nixos/modules/config/users-groups.nix
    users.users = mkOption { type = types.attrsOf types.anything; default = { }; };
    # nixos/modules/services/networking/ssh/sshd.nix, ttys/getty.nix
    services.openssh.enable = bool false;
    services.openssh.settings = any;
    services.getty.autologinUser = mkOption { type = types.nullOr types.str; default = null; };
  };
}
