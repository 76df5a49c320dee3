# The clan side of the evaluation tests: vmcred's clan service
# (nixos-modules/clan) evaluated by clan-core's own code, for one machine.
#
#   import ./clan.nix { lib; directory; machine; instances; }
#   -> { module; machineModule; clanLib; service; }
#
# `module` is a NixOS module for tests/harness.nix (its `case`): what a clan
# machine gets from the inventory, built from
#  - clan-core's service evaluation, unmodified
#    (third_party/clan-core/lib/inventory/distributed-service/service-module.nix):
#    the service's roles, interfaces, settings and perInstance modules are
#    resolved by the same module clan uses, and its
#    `result.final.<machine>.nixosModule` is imported;
#  - clan-core's vars module, unmodified
#    (third_party/clan-core/nixosModules/clanCore/vars): clan.core.vars with
#    the sops secret store (clan's default) and the in_repo public store,
#    reading values from `directory` laid out as clan lays out a clan's
#    repository (vars/per-machine/<machine>/<generator>/<file>/{secret,value});
#  - clanLib as clan-core's lib/default.nix composes it, restricted to the
#    parts the two modules above use: lib/vars (getPublicValue) and
#    lib/exports/exports.nix (buildScopeKey, checkExports).
#
# Not clan's own (stand-ins, each saying what it stands for):
#  - `clan.core.settings` (clanCore/settings.nix declares it; clan sets it
#    from the inventory): only directory and machine.name;
#  - `clanConfig` (declared by clan's machine module; left undefined, as on
#    a machine whose vars backend is chosen per machine);
#  - sops-nix's `sops` options (github:Mic92/sops-nix modules/sops): the
#    attributes clan sets, and `path`, whose default is sops-nix's
#    "/run/secrets/<name>".
#
# Why not clanLib.clan (the whole inventory -> nixosConfigurations): it builds
# every machine with nixpkgs.lib.nixosSystem, i.e. all of NixOS's modules and
# nixpkgs' packages, plus clan-core's flake-parts modules and the full
# clanCore module tree (sops-nix, disko, networking, …), none of which is
# vendored or available offline. The two pieces above are exactly the part
# of that pipeline that turns an inventory instance of a clan service into
# a machine's NixOS configuration and its clan vars.
{ lib
  # A clan repository (string path) with vars/…, as `clan vars generate`
  # leaves it.
, directory
  # The machine being evaluated.
, machine
  # inventory.instances, for this service: { <name> = { roles.<role>.machines.<m>.settings = …; … }; }
, instances ? { }
, meta ? { name = "vmcred-test"; domain = "vmcred.test"; }
}:
let
  clanCore = ./third_party/clan-core;

  # As clan-core's lib/default.nix, lines `// (import ./vars/default.nix …)`
  # and `// (import ./exports/exports.nix …)`.
  clanLib = lib.fix (self:
    (import (clanCore + "/lib/vars/default.nix") { inherit lib; })
    // (import (clanCore + "/lib/exports/exports.nix") { inherit lib; clanLib = self; }));

  # As clan-core's lib/inventory/distributed-service/all-services-wrapper.nix
  # evaluates one service (its `allServices.<name>` submodule): class
  # "clan.service", the same special arguments, service-module.nix plus the
  # service module and the inventory's instances (without the wrapper's
  # api.nix, which only adds metadata for clan's GUI, and without tag
  # resolution: the instances name their machines).
  service = lib.evalModules {
    class = "clan.service";
    specialArgs = {
      inherit clanLib directory meta;
      exports = { };
      _ctx = [ "vmcred" ];
    };
    modules = [
      (clanCore + "/lib/inventory/distributed-service/service-module.nix")
      ../clan/default.nix
      # As clan-core's modules/clan/distributed-services.nix adds them.
      {
        options.module = lib.mkOption {
          type = lib.types.raw;
          default = { name = "vmcred"; input = "vmcred"; };
        };
      }
      { inherit instances; }
    ];
  };

  # STAND-IN for what a clan machine has besides the vars module (see top).
  machineStandIn = { lib, ... }: {
    options = {
      clan.core.settings = {
        directory = lib.mkOption { type = lib.types.str; };
        machine.name = lib.mkOption { type = lib.types.str; };
      };
      clanConfig = lib.mkOption { type = lib.types.raw; };
      sops = {
        secrets = lib.mkOption {
          default = { };
          type = lib.types.attrsOf (lib.types.submodule ({ name, ... }: {
            options = {
              owner = lib.mkOption { type = lib.types.str; default = "root"; };
              group = lib.mkOption { type = lib.types.str; default = "root"; };
              mode = lib.mkOption { type = lib.types.str; default = "0400"; };
              path = lib.mkOption { type = lib.types.str; default = "/run/secrets/${name}"; };
              sopsFile = lib.mkOption { type = lib.types.raw; };
              format = lib.mkOption { type = lib.types.str; default = "yaml"; };
              neededForUsers = lib.mkOption { type = lib.types.bool; default = false; };
              restartUnits = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
            };
          }));
        };
        defaultSopsFile = lib.mkOption { type = lib.types.raw; default = null; };
        validateSopsFiles = lib.mkOption { type = lib.types.bool; default = true; };
        age.keyFile = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; };
      };
    };
    config.clan.core.settings = {
      inherit directory;
      machine.name = machine;
    };
  };
in
{
  inherit clanLib service;

  # A clan machine without the service: clan's vars module and the
  # stand-ins (for configurations that declare generators themselves, like
  # examples/test-vm.nix).
  machineModule = {
    imports = [
      (clanCore + "/nixosModules/clanCore/vars")
      machineStandIn
    ];
  };

  # The same machine with what the service's instances give it.
  module = {
    imports = [
      (clanCore + "/nixosModules/clanCore/vars")
      machineStandIn
      service.config.result.final.${machine}.nixosModule
    ];
  };
}
