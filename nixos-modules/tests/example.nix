# Evaluates examples/test-vm.nix offline: the example against a stub host
# configuration (clan vars paths, no nixpkgs), then its services.vmcred.vms
# through host.nix and its VM's services.vmcred-guest through guest.nix (with
# what host.nix adds to the VM), using eval.nix. Prints
# { generators, vms, host, guest, demo }; units_test.go checks them.
#   nix-instantiate --eval --strict --json tests/example.nix
{ package ? "/usr" }:
let
  lib = import ./stub-lib.nix;
  stubPkgs = {
    callPackage = _fn: _args: package;
    coreutils = "/nix/store/stub-coreutils";
    openssl = "/nix/store/stub-openssl";
    vim = "/nix/store/stub-vim";
    htop = "/nix/store/stub-htop";
  };

  varsPath = g: f: "/run/secrets/vars/per-machine/britton-desktop/${g}/${f}";
  publicKey = "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1";

  hostConfig = {
    services.vmcred.package = package;
    clan.core.vars.generators = {
      test-vm-secrets.files = lib.genAttrs [ "api-key" "db-password" "jwt-secret" ] (f: { path = varsPath "test-vm-secrets" f; });
      vmcred-signing.files = {
        "signing.key".path = varsPath "vmcred-signing" "signing.key";
        "signing.pub".value = publicKey;
      };
    };
  };

  example = import ../examples/test-vm.nix { config = hostConfig; inherit lib; pkgs = stubPkgs; };

  vms = example.services.vmcred.vms;
  guestFn = example.microvm.vms.test-vm.config;
  guest = guestFn { inherit lib; pkgs = stubPkgs; config = { }; };

  # What host.nix says about the example's VM, with the VM's microvm.nix
  # settings taken from the example.
  host = import ./eval.nix {
    module = ../host.nix;
    inherit package;
    config = { services.vmcred = { inherit vms; }; };
    foreignConfig = {
      microvm.stateDir = "/var/lib/microvms";
      microvm.vms.test-vm = {
        flake = null;
        evaluatedConfig = null;
        config.config.microvm = guest.microvm;
      };
    };
    foreignOptions = { microvm.vms = { }; };
    guests.test-vm = {
      config = { microvm = guest.microvm; services.vmcred-guest = guest.services.vmcred-guest; };
      options = { services.vmcred-guest = { }; };
    };
  };

  # The VM's agent: the example's settings plus what host.nix adds.
  fromHost = host.guests.test-vm.services.vmcred-guest or { };
  guestAgent = import ./eval.nix {
    module = ../guest.nix;
    inherit package;
    config = { services.vmcred-guest = guest.services.vmcred-guest // fromHost; };
  };
in
{
  generators = example.clan.core.vars.generators;
  inherit vms;
  imports = map toString example.imports;
  guestImports = map toString guest.imports;
  host = { inherit (host) assertions warnings scripts guests; systemd = host.config.systemd; };
  guest = {
    inherit (guestAgent) assertions warnings;
    unit = guestAgent.config.systemd.services.vmcred-guest;
    consumerDeps = guestAgent.config.systemd.services.demo-oem-credentials or { };
  };
  demo = guest.systemd.services.demo-oem-credentials // { script = "<omitted>"; };
}
