{ lib, config, ... }:
let
  inherit (lib) mkOption;
  inherit (lib.types)
    str
    path
    bool
    nullOr
    deferredModuleWith
    submoduleWith
    attrsOf
    listOf
    ;

  fileModuleInterface = file: {
    options = {
      name = mkOption {
        type = str;
        description = ''
          name of the public fact
        '';
        readOnly = true;
        default = file.config._module.args.name;
        defaultText = "Name of the file";
      };
      rel_dir = mkOption {
        type = str;
        description = ''
          Subdirectory of this generator under `vars/`.

          One of:

          - `per-machine/{machine}/{generator}`
          - `shared/{generator}`
          - `per-export/{export}/{generator}`

          Set by the enclosing generator submodule.
          Must match `GeneratorId.rel_dir` in `clan_lib/vars/_types.py`.
        '';
        internal = true;
        visible = false;
      };

      generatorName = mkOption {
        type = str;
        description = ''
          name of the generator
        '';
        # This must be set by the 'generator' (parent of this submodule)
        default = throw "generatorName must be set by the generator";
        defaultText = "Name of the generator that generates this file";
      };
      secret = mkOption {
        description = ''
          Whether the file should be treated as a secret.
        '';
        type = bool;
        default = true;
      };
      flakePath = mkOption {
        description = ''
          The path to the file containing the content of the generated value.
          This will be set automatically
        '';
        type = nullOr path;
        default = null;
      };
      path = mkOption {
        description = ''
          The path to the file containing the content of the generated value.
          This will be set automatically
        '';
        type = str;
        defaultText = ''
          builtins.path {
            name = "$${file.config.rel_dir}_$${file.config.name}";
            path = file.config.flakePath;
          }
        '';
        default =
          if file.config.flakePath == null then
            throw "flakePath must be set before accessing path"
          else if !builtins.pathExists file.config.flakePath then
            throw "File '${file.config.name}' at '${file.config.rel_dir}' does not exist. Try running 'clan vars generate' first."
          else
            builtins.path {
              # rel_dir + name is unique.
              # rel_dir contains "/", which is illegal in a store name.
              name = lib.strings.sanitizeDerivationName "${file.config.rel_dir}_${file.config.name}";
              path = file.config.flakePath;
            };
      };
      exists = mkOption {
        description = ''
          Returns true if the file exists. This is used to guard against reading not set value in evaluation.
          This currently only works for non secret files.
        '';
        type = bool;
        default = if file.config.secret then throw "Cannot determine existence of secret file" else false;
        defaultText = "Throws error because the existence of a secret file cannot be determined";
      };
      value =
        mkOption {
          description = ''
            The content of the generated value.
            Only available if the file is not secret.
          '';
          type = str;
          defaultText = "Throws error because the value of a secret file is not accessible";
        }
        // lib.optionalAttrs file.config.secret {
          default = throw "Cannot access value of secret file";
        };
    };
  };

  storeModule = {
    options.pythonModule = mkOption { type = str; };
  };

in
{
  options = {
    secretStore = mkOption {
      type = lib.types.enum [
        "sops"
        "password-store"
        "age"
        "custom"
      ];
      default = "sops";
      description = ''
        method to store secret vars.
        custom can be used to define a custom secret var store.
      '';
    };

    secretModule = mkOption {
      type = str;
      internal = true;
      description = ''
        the python import path to the secret module
      '';
      default = config.stores.${config.secretStore}.pythonModule;
    };

    # TODO: see if this is the right approach. Maybe revert to secretPathFunction
    fileModule = mkOption {
      type = deferredModuleWith {
        staticModules = [
          fileModuleInterface
          (lib.mkRenamedOptionModule
            [
              "sops"
              "owner"
            ]
            [
              "owner"
            ]
          )
          (lib.mkRenamedOptionModule
            [
              "sops"
              "group"
            ]
            [
              "group"
            ]
          )
        ];
      };
      internal = true;
      description = ''
        A module to be imported in every vars.files.<name> submodule.
        Used by backends to define the `path` attribute.
      '';
      default = { };
    };

    publicStore = mkOption {
      type = lib.types.enum [
        "in_repo"
      ];
      default = "in_repo";
      description = ''
        Method to store public vars.
        Currently only 'in_repo' is supported, which stores public vars in the clan repository.
      '';
    };

    publicModule = mkOption {
      type = str;
      internal = true;
      description = ''
        the python import path to the public module
      '';
      default = config.publicStores.${config.publicStore}.pythonModule;
    };

    stores = mkOption {
      internal = true;
      visible = false;
      type = attrsOf (submoduleWith {
        modules = [ storeModule ];
      });
    };
    publicStores = mkOption {
      internal = true;
      visible = false;
      type = attrsOf (submoduleWith {
        modules = [ storeModule ];
      });
    };

    recipients = mkOption {
      type = lib.types.submodule {
        options = {
          hosts = mkOption {
            type = attrsOf (listOf str);
            default = { };
            description = ''
              Age public keys per host for secret encryption.
              Example:
                recipients.hosts.myhost = [ "age1..." ];
            '';
          };
          default = mkOption {
            type = listOf str;
            default = [ ];
            description = ''
              Fallback age recipients used when no host-specific recipients are configured.
              Only applies to machines without entries in `recipients.hosts`.
            '';
          };
        };
      };
      default = { };
      description = ''
        Age recipients configuration for the age secret store.
      '';
    };

  };

  config.stores = {
    fs = {
      pythonModule = "clan_lib.vars.secret_modules.fs";
    };
    sops = {
      pythonModule = "clan_lib.vars.secret_modules.sops";
    };
    "password-store" = {
      pythonModule = "clan_lib.vars.secret_modules.password_store";
    };
    age = {
      pythonModule = "clan_lib.vars.secret_modules.age";
    };
  };
  config.publicStores = {
    in_repo = {
      pythonModule = "clan_lib.vars.public_modules.in_repo";
    };
  };
}
