# The seed's test-vm (shared/seed.md, "Solution 2") as an inventory instance
# of vmcred's clan service, on the host britton-desktop: the `case` for
# tests/harness.nix, with the clan side from tests/clan.nix.
#
#   nix-instantiate --eval --strict --json tests/harness.nix \
#     --arg case 'import ./tests/clan-seed.nix { directory = "/tmp/clan"; }' \
#     --arg extra 'import ./tests/clan-extra.nix'
#
# `settings` replaces the host role's settings (the Go tests vary them);
# `extraModules` are added to the host's configuration.
{ directory
  # The machine evaluated: the host, or (guest role) the VM as a clan machine.
, machine ? "britton-desktop"
, settings ? null
, instances ? null
, extraModules ? [ ]
}:
# The module function's `lib` is the harness's (nixpkgs lib).
{ lib, ... }:
let
  # As a user writes it in inventory/services/test-vm.nix (see
  # nixos-modules/clan/README.md, side by side with the seed's).
  seedSettings = {
    hypervisor = "cloud-hypervisor";
    credentials = {
      API_KEY.generate = { };
      DB_PASSWORD.generate = { };
      JWT_SECRET.generate = { length = 64; };
    };
    staticOEMStrings = [
      "io.systemd.credential:ENVIRONMENT=test"
      "io.systemd.credential:CLUSTER=britton-desktop"
    ];
    vsock.cid = 3;
    microvm = {
      vcpu = 2;
      mem = 1024;
      interfaces = [{ type = "tap"; id = "vm-test"; mac = "02:00:00:01:01:01"; }];
      shares = [{ tag = "ro-store"; source = "/nix/store"; mountPoint = "/nix/.ro-store"; proto = "virtiofs"; }];
    };
    consumers = [ "demo-oem-credentials" ];
  };

  clan = import ./clan.nix {
    inherit lib directory;
    inherit machine;
    instances =
      if instances != null then instances
      else {
        test-vm = {
          roles.host.machines.britton-desktop.settings =
            if settings != null then settings else seedSettings;
        };
      };
  };
in
{
  imports = [ clan.module ] ++ extraModules;

  # The rest of the seed's machines/test-vm/configuration.nix, as the user
  # keeps it in the host's configuration: the service that reads the
  # credentials, unchanged.
  microvm.vms = lib.optionalAttrs (machine == "britton-desktop") {
    test-vm.config = {
      networking.hostName = "test-vm";
      systemd.services.demo-oem-credentials = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          Type = "oneshot";
          LoadCredential = [
            "environment:ENVIRONMENT"
            "cluster:CLUSTER"
            "api-key:API_KEY"
            "db-password:DB_PASSWORD"
            "jwt-secret:JWT_SECRET"
          ];
        };
        script = "test -s $CREDENTIALS_DIRECTORY/api-key";
      };
    };
  };
}
