{ fileContextModule }:
{ lib, config, ... }:
let
  inherit (builtins)
    hashString
    toJSON
    ;

  inherit (lib)
    types
    mkOption
    attrNames
    concatMapStrings
    genAttrs
    filterAttrs
    makeBinPath
    mkOptionDefault
    optionalString
    ;

  inherit (types)
    str
    # submoduleWith
    nullOr
    oneOf
    bool
    int
    listOf
    package
    attrsOf
    either
    path
    raw
    submodule
    strMatching
    enum
    ;

  pkgs = config.pkgs;

  promptToFile = name: ''
    cat "$prompts/${name}" > "$out/${name}"
  '';

  promptsToFilesScript = concatMapStrings promptToFile;

  filePromptNames = attrNames (filterAttrs (_name: prompt: prompt.persist) config.prompts);

  displayModule = ../vars/display.nix;
in
{
  options = {
    pkgs = mkOption {
      type = raw;
      description = ''
        The pkgs set to use for this generator.
        This is usually inherited from the nixos pkgs set.
      '';
      internal = true;
      visible = false;
    };
    settings = mkOption {
      type = raw;
      description = ''
        The settings for this generator.
        This is usually inherited from the settings of the current context (machine).
      '';
      internal = true;
      visible = false;
      # Docs generation needs a file module
      # Since we don't know what the user configured, we cannot display sub-options
      # -> render an empty module
      # See vars.settings for available module choices and sub-options of each module
      default = {
        fileModule = { };
      };
    };

    name = mkOption {
      type = str;
      description = ''
        The name of the generator.
        This name will be used to refer to the generator in other generators.
      '';
      readOnly = true;
      default = config._module.args.name;
      defaultText = "Name of the generator";
    };
    # Machine injects the dependency option

    validation = mkOption {
      description = ''
        A set of values that invalidate the generated values.
        If any of these values change, the generated values will be re-generated.
        Lists are not allowed as of now due to potential ordering issues
      '';
      default = null;
      # This is more restrictive than json without lists, but currently
      # if a value contains a list, we get an infinite recursion which
      # is hard to understand.
      type = nullOr (oneOf [
        bool
        int
        str
        (attrsOf (oneOf [
          bool
          int
          str
          (attrsOf (oneOf [
            bool
            int
            str
          ]))
        ]))
      ]);
    };
    # the validationHash is the validation interface to the outside world
    validationHash = mkOption {
      internal = true;
      description = ''
        A hash of the invalidation data.
        If the hash changes, the generated values will be re-generated.
      '';
      type = nullOr str;
      # TODO: recursively traverse the structure and sort all lists in order to support lists
      default =
        # For backwards compat, the hash is null by default in which case the check is omitted
        if config.validation == null then null else hashString "sha256" (toJSON config.validation);
      defaultText = "Hash of the invalidation data";
    };

    files = mkOption {
      description = ''
        A set of files to generate.
        The generator 'script' is expected to produce exactly these files under $out.
      '';
      type = attrsOf (
        submodule (_file: {
          imports = [
            # TODO: Combine both
            fileContextModule
            config.settings.fileModule
            {
              generatorName = config._module.args.name;
            }
            # Machine specific file options
            (_file: {
              options = {
                owner = mkOption {
                  description = ''
                    The user name or id that will own the file on the target machine after deployment.

                    Do not use this option to make secrets available to systemd services running as a non-root user.
                    Instead use the systemd `LOAD_CREDENTIAL=` feature, as documented at https://systemd.io/CREDENTIALS/.
                  '';
                  type = str;
                  default = "root";
                };
                group = mkOption {
                  type = str;
                  description = ''
                    The group name or id that will own the file on the target machine after deployment.

                    Do not use this option to make secrets available to systemd services running as a non-root user.
                    Instead use the systemd `LOAD_CREDENTIAL=` feature, as documented at https://systemd.io/CREDENTIALS/.
                  '';
                  default = if config.pkgs.stdenv.hostPlatform.isDarwin then "wheel" else "root";
                  defaultText = lib.literalExpression ''if pkgs.stdenv.hostPlatform.isDarwin then "wheel" else "root"'';
                };
                mode = mkOption {
                  type = strMatching "^[0-7]{4}$";
                  description = "The unix file mode of the file. Must be a 4-digit octal number.";
                  default = "0400";
                };
                neededFor = mkOption {
                  description = ''
                    This option determines when the secret will be decrypted and deployed to the target machine.

                    By setting this to `partitioning`, the secret will be deployed prior to running `disko` allowing
                    you to manage filesystem encryption keys. These will only be deployed when installing the system.
                    By setting this to `activation`, the secret will be deployed prior to running `nixos-rebuild` or `nixos-install`.
                    By setting this to `user`, the secret will be deployed prior to users and groups are created, allowing
                    users' passwords to be managed by vars. The secret will be stored in `/run/secrets-for-users` and `owner` and `group` must be `root`.
                  '';
                  type = enum [
                    "partitioning"
                    "activation"
                    "users"
                    "services"
                  ];
                  default = "services";
                };
                restartUnits = mkOption {
                  description = ''
                    A list of systemd units that should be restarted after the file is deployed.
                    This is useful for services that need to reload their configuration after the file is updated.

                    WARNING: currently only sops-nix implements this option.

                    NOTE: This option is not supported on Darwin systems.
                  '';
                  type = listOf str;
                  apply =
                    value:
                    # If the value is set to a non-empty list on Darwin, throw an error
                    lib.throwIf (value != [ ] && config.pkgs.stdenv.hostPlatform.isDarwin) ''
                      The restartUnits option is not supported on Darwin systems.
                    '' value;
                  default = [ ];
                };
              };
            })
          ];
        })
      );
    };
    prompts = mkOption {
      description = ''
        A set of prompts to ask the user for values.
        Prompts are available to the generator script as files.
        For example, a prompt named 'prompt1' will be available via $prompts/prompt1
      '';
      default = { };
      type = attrsOf (
        submodule (prompt: {
          imports = [ displayModule ];
          options = {
            name = mkOption {
              description = ''
                The name of the prompt.
                This name will be used to refer to the prompt in the generator script.
              '';
              type = str;
              default = prompt.config._module.args.name;
              defaultText = "Name of the prompt";
            };
            persist = mkOption {
              description = ''
                Whether the prompted value should be stored in a file with the same name as the prompt.

                If enabled, the behavior is equivalent to the following configuration:
                ```nix
                {
                  files.<name>.secret = true;
                  script = "cp $prompts/<name> $out/<name>";
                }
                ```
              '';
              type = bool;
              default = false;
            };
            description = mkOption {
              description = ''
                The description of the prompted value
              '';
              type = str;
              example = "SSH private key";
              default = prompt.config._module.args.name;
              defaultText = "Name of the prompt";
            };
            type = mkOption {
              description = ''
                The input type of the prompt.
                The following types are available:
                  - hidden: A hidden text (e.g. password)
                  - line: A single line of text
                  - multiline: A multiline text
                  - multiline-hidden: A multiline text
              '';
              type = enum [
                "hidden"
                "line"
                "multiline"
                "multiline-hidden"
              ];
              default = "line";
            };
          };
        })
      );
    };
    runtimeInputs = mkOption {
      description = ''
        A list of packages that the generator script requires.
        These packages will be available in the PATH when the script is run.
      '';
      type = listOf package;
      default = [ ];
    };
    script = mkOption {
      description = ''
        The script to run to generate the files.
        The script will be run with the following environment variables:

        - $in: The directory containing the output values of all declared dependencies
        - $out: The output directory to put the generated files
        - $prompts: The directory containing the prompted values as files

        The script should produce the files specified in the 'files' attribute under $out.
      '';
      type = either str path;
      default = "";
    };
    finalScript = mkOption {
      description = ''
        The final generator script, wrapped, so:
          - all required programs are in PATH
          - sandbox is set up correctly
      '';
      type = path;
      readOnly = true;
      internal = true;
    };
    share = mkOption {
      description = ''
        Whether the generated vars should be shared between machines.
        Shared vars are only generated once, when the first machine using it is deployed.
        Subsequent machines will re-use the already generated values.
      '';
      type = bool;
      default = false;
    };
  };
  config = {
    finalScript = mkOptionDefault (
      pkgs.writeScript "generator-${config.name}" ''
        set -euo pipefail

        PATH=${makeBinPath (config.runtimeInputs ++ [ pkgs.coreutils ])}

        ${optionalString (pkgs.stdenv.hostPlatform.isLinux) ''
          # prepare sandbox user on platforms where this is supported

          # If /etc does not exist, create minimal /etc
          # This is needed for sandboxed/non-sandboxed execution to work correctly
          # In case of 'non-sandboxed' execution, /etc exists already, so we don't need to do this
          if [[ ! -d /etc ]]; then
            mkdir -p /etc

            cat > /etc/group <<EOF
          root:x:0:
          nixbld:!:$(id -g):
          nogroup:x:65534:
          EOF

            cat > /etc/passwd <<EOF
          root:x:0:0:Nix build user:/build:/noshell
          nixbld:x:$(id -u):$(id -g):Nix build user:/build:/noshell
          nobody:x:65534:65534:Nobody:/:/noshell
          EOF

            cat > /etc/hosts <<EOF
          127.0.0.1 localhost
          ::1 localhost
          EOF
          fi
        ''}
        ${promptsToFilesScript filePromptNames}
        ${config.script}
      ''
    );

    files = genAttrs filePromptNames (_name: { });
  };
}
