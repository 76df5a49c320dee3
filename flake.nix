# vmcred as a flake: the NixOS modules and the package.
#
#   inputs.vmcred.url = "github:vmcred/vmcred";
#   # host (next to inputs.microvm.nixosModules.host):
#   imports = [ inputs.vmcred.nixosModules.host ];
#   # in a VM's configuration:
#   imports = [ inputs.vmcred.nixosModules.guest ];
#
# nixos-modules/README.md explains both sides step by step.
# nixos-modules/tests/harness.nix evaluates `outputs` below with stand-in
# inputs, so the evaluation tests import the modules exactly as exported here.
{
  description = "vmcred: secrets from a NixOS host into micro-VMs as verified systemd credentials";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs, ... }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      vmcredFor = pkgs: pkgs.callPackage ./nixos-modules/package.nix { };
    in
    {
      # pkgs.vmcred (vmcred-host and vmcred-guest).
      overlays.default = final: _prev: { vmcred = vmcredFor final; };

      packages = forAllSystems (pkgs: rec {
        vmcred = vmcredFor pkgs;
        default = vmcred;
      });

      # The clan service (clan-core's `_class = "clan.service"`): an
      # inventory instance per VM that generates its secrets and signing key
      # as clan vars and wires host and guest. nixos-modules/clan/README.md.
      clan.modules.vmcred = ./nixos-modules/clan/default.nix;

      nixosModules = {
        # services.vmcred: the host side, for microvm.nix VMs. Wires the
        # guest side of every VM declared in microvm.vms.<name>.config
        # itself (it imports the guest module there).
        host = ./nixos-modules/host.nix;
        # services.vmcred-guest: the agent in the VM. Needed by hand only
        # for VMs built elsewhere (microvm.vms.<name>.flake, `microvm -c`).
        guest = ./nixos-modules/guest.nix;
        # Both: the guest side's options are harmless on a host.
        default = {
          imports = [ self.nixosModules.host self.nixosModules.guest ];
        };
      };
    };
}
