# examples/test-vm.nix (the hand-wired form: its clan vars generators
# declared by hand, no clan service) on britton-desktop with clan-core's
# real vars module (tests/clan.nix's machineModule) instead of
# standin/clan-vars.nix: the `case` for tests/harness.nix.
{ directory }:
{ lib, ... }:
{
  imports = [
    (import ./clan.nix { inherit lib directory; machine = "britton-desktop"; }).machineModule
    ../examples/test-vm.nix
  ];
  networking.hostName = "britton-desktop";
}
