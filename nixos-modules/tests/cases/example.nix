# examples/test-vm.nix as a user imports it (next to microvm.nix's host
# module, which the harness imports), on the seed's host britton-desktop
# with clan vars (a stand-in of clan-core's interface).
{ ... }:
{
  imports = [
    ../standin/clan-vars.nix
    ../../examples/test-vm.nix
  ];
  networking.hostName = "britton-desktop";
}
