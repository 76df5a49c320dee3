# STAND-IN for nixpkgs' nixos/lib/eval-config.nix, for evaluation tests only.
#
# microvm.nix evaluates every `microvm.vms.<name>.config` by importing
# "${config.nixpkgs}/nixos/lib/eval-config.nix" (its
# nixos-modules/host/options.nix, the `config` option's merge); the tests
# point `nixpkgs` (pkgs.path) at ../.., so it finds this file. Like the real
# one it is a thin wrapper around the real `lib.evalModules` (nixpkgs lib,
# tests/third_party/nixpkgs-lib) with NixOS's base modules first: here the
# stand-ins in ../modules/module-list.nix instead of NixOS's ~2000 modules.
# It takes the real file's arguments (modules, prefix, specialArgs,
# extraModules, pkgs, system) and returns what it returns (the evalModules
# result: config, options, …, plus pkgs and extendModules).
{ system ? "x86_64-linux"
, pkgs ? null
, baseModules ? import ../modules/module-list.nix
, specialArgs ? { }
, modules
, prefix ? [ ]
, extraModules ? [ ]
, lib ? pkgs.lib
}:
let
  pkgsModule = {
    _file = ./eval-config.nix;
    key = ./eval-config.nix;
    config._module.args.pkgs = lib.mkDefault pkgs;
  };
  evaluated = lib.evalModules {
    inherit prefix;
    # As the real eval-config.nix: modules see _class = "nixos" (clan's
    # vars module checks it).
    class = "nixos";
    specialArgs = { modulesPath = toString ../modules; } // specialArgs;
    modules = baseModules ++ [ pkgsModule ] ++ extraModules ++ modules;
  };
  withExtraAttrs = configuration: configuration // {
    inherit lib;
    inherit (configuration._module.args) pkgs;
    extendModules = args: withExtraAttrs (configuration.extendModules args);
  };
in
withExtraAttrs evaluated
