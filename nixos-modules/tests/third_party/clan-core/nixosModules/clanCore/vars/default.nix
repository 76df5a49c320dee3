{
  _class,
  lib,
  config,
  options,
  pkgs,
  ...
}:
let
  inherit (lib.types) submodule;

  machineName = config.clan.core.settings.machine.name;
in
{
  imports = [
    ./public/in_repo.nix
    ./secret/sops
    ./secret/password-store.nix
    {
      assertions =
        lib.mkIf (config.clan.core.vars.enableConsistencyCheck && options.clanConfig.isDefined)
          [
            {
              assertion =
                config.clanConfig.clanInternals.vars.settings.secretStore
                == config.clan.core.vars.settings.secretStore;
              message = ''
                [DEPRECATED] Machine-level vars backend configuration is deprecated and will be removed in a future release.

                Machine: '${config.clan.core.settings.machine.name}' uses (${config.clan.core.vars.settings.secretStore}),
                while your clan uses (${config.clanConfig.clanInternals.vars.settings.secretStore})

                Please move your vars backend selection to the 'clan' level:

                ```
                # clan.nix / flake.nix

                clan.vars.settings.secretStore = "${config.clan.core.vars.settings.secretStore}";
                ```

                Remove the machine-level configuration.
              '';
            }
          ];
    }
  ]
  ++ lib.optionals (_class == "nixos") [
    ./secret/password-store.nix
  ]
  ++ [
    ./secret/age.nix
  ];

  options.clan.core.vars = lib.mkOption {
    description = ''
      Generated Variables

      Define generators that prompt for or generate variables and secrets to store, deploy, and rotate them easily.
      For example, generators can be used to:
        - prompt the user for input, like passwords or host names
        - generate secrets like private keys automatically when they are needed
        - output multiple values like private and public keys simultaneously
    '';
    type = submodule {
      imports = [
        ./interface.nix
        {
          inherit pkgs machineName;
          globalSettings = lib.mkIf options.clanConfig.isDefined config.clanConfig.vars.settings;
        }
        {
          options.enableConsistencyCheck = lib.mkOption {
            default = true;
            internal = true;
            visible = false;
            description = ''
              Disable consistency assertions between this machine and its hosting clan.
              Temporary workaround because the nixos test-framework uses clan-core as clan.
            '';
          };
        }
      ];
    };
  };

  config = {
    # check all that all non-secret files have no owner/group/mode set
    warnings = lib.foldl' (
      warnings: generator:
      warnings
      ++ lib.foldl' (
        warnings: file:
        warnings
        ++
          lib.optional
            (
              !file.secret
              && (
                file.owner != "root"
                || file.group != (if _class == "darwin" then "wheel" else "root")
                || file.mode != "0400"
              )
            )
            ''
              The config.clan.core.vars.generators.${generator.name}.files.${file.name} is not secret:
              ${lib.optionalString (file.owner != "root") ''
                The owner is set to ${file.owner}, but should be root.
              ''}
              ${lib.optionalString (file.group != (if _class == "darwin" then "wheel" else "root")) ''
                The group is set to ${file.group}, but should be ${if _class == "darwin" then "wheel" else "root"}.
              ''}
              ${lib.optionalString (file.mode != "0400") ''
                The mode is set to ${file.mode}, but should be 0400.
              ''}
              This doesn't work because the file will be added to the nix store
            ''
      ) [ ] (lib.attrValues generator.files)
    ) [ ] (lib.attrValues config.clan.core.vars.generators);

  };
}
