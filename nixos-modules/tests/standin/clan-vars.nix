# STAND-IN for clan-core's vars interface (clan-core
# nixosModules/clanCore/vars/interface.nix, with the sops backend's paths
# from its secret/sops module): `clan.core.vars.generators.<g>` with
# `files.<f>.{secret,path,value,owner,group,mode,deploy,neededFor}`,
# `runtimeInputs` and `script`. Nothing is generated: a secret's `path` is
# where clan's sops backend puts it since 2026-08
# (/run/secrets/vars/per-machine/<machine>/<generator>/<file>), and a public
# file's `value` is a fixed, made-up public key.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  machine = config.networking.hostName;
in
{
  options.clan.core.vars.generators = mkOption {
    default = { };
    type = types.attrsOf (types.submodule ({ name, ... }: let generator = name; in {
      options = {
        files = mkOption {
          default = { };
          type = types.attrsOf (types.submodule ({ name, config, ... }: {
            options = {
              secret = mkOption { type = types.bool; default = true; };
              deploy = mkOption { type = types.bool; default = true; };
              neededFor = mkOption { type = types.enum [ "partitioning" "activation" "users" "services" ]; default = "services"; };
              owner = mkOption { type = types.str; default = "root"; };
              group = mkOption { type = types.str; default = "root"; };
              mode = mkOption { type = types.strMatching "^[0-7]{4}$"; default = "0400"; };
              path = mkOption {
                type = types.str;
                readOnly = true;
                default = "/run/secrets/vars/per-machine/${machine}/${generator}/${name}";
              };
              value = mkOption {
                type = types.str;
                readOnly = true;
                default =
                  if config.secret then throw "clan vars: ${generator}/${name} is a secret: it has a path, not a value"
                  else "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1";
              };
            };
          }));
        };
        runtimeInputs = mkOption { type = types.listOf types.package; default = [ ]; };
        script = mkOption { type = types.str; default = ""; };
      };
    }));
  };
}
