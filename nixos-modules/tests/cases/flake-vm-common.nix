# A VM built from a flake (microvm.vms.<name>.flake): the host module cannot
# extend its configuration; the flake wires itself with
# services.vmcred-guest.hostVM (the agent's VM name). A function of `wired`
# (false: a flake that forgot to), used by flake-vm.nix and
# flake-vm-unwired.nix.
wired: { pkgs, lib, vmcred, microvm, ... }:
let
  vmFlake = {
    outPath = "/nix/store/00000000000000000000000000000000-vm-flake";
    nixosConfigurations.flkvm = import "${pkgs.path}/nixos/lib/eval-config.nix" {
      inherit pkgs lib;
      modules = [
        (microvm + "/nixos-modules/microvm")
        vmcred.nixosModules.guest
        {
          # Not the VM's name on the host: hostVM makes the agent's vmName
          # right; without it the agent would refuse the host's sessions.
          networking.hostName = "flkvm-guest";
          microvm = { hypervisor = "cloud-hypervisor"; vsock.cid = 10; };
          services.vmcred-guest = {
            enable = true;
            trustedKeys = [ "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1" ];
            hostVM = lib.mkIf wired "flkvm";
          };
        }
      ];
    };
  };
in
{
  services.vmcred.vms.flkvm = {
    credentials.API_KEY.file = "/run/secrets/flkvm/api-key";
    signingKeyFile = "/run/secrets/flkvm/signing.key";
  };
  microvm.vms.flkvm.flake = vmFlake;
}
