{
  _class,
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  installSecretTarball = pkgs.writeShellApplication {
    name = "install-secret-tarball";
    runtimeInputs = [
      pkgs.gnutar
      pkgs.gzip
      pkgs.util-linux
    ];
    text = ''
      set -efu -o pipefail
      set -x

      src=$1
      target=$2

      echo "installing secrets from $src to $target" >&2

      mkdir -p "$target".tmp "$target"
      if mountpoint -q "$target"; then
        # Prepare new mount with secrets in a staging location.
        mount -t tmpfs -o noswap tmpfs "$target".tmp
        chmod 511 "$target".tmp
        tar -xf "$src" -C "$target".tmp

        # Attach a fresh bind of the staged mount BENEATH the live target,
        # then unmount the old top atomically. `mount --bind --beneath`
        # avoids the stacked-mount accumulation that a plain `--move` would
        # produce on shared subtrees, and matches the clone+move semantics
        # the previous `move-mount --detached --beneath` helper provided.
        # Requires util-linux >= 2.40.
        mount --bind --beneath "$target".tmp "$target"
        umount --lazy "$target"
        umount "$target".tmp
        rmdir "$target".tmp
      else
        mount -t tmpfs -o noswap tmpfs "$target"
        chmod 511 "$target"
        tar -xf "$src" -C "$target"
      fi
    '';
  };
  useSystemdActivation =
    _class == "nixos"
    && (
      (options.systemd ? sysusers && config.systemd.sysusers.enable)
      || (options.services ? userborn && config.services.userborn.enable)
    );

  normalSecrets = lib.any (
    gen: lib.any (file: file.neededFor == "services") (lib.attrValues gen.files)
  ) (lib.attrValues config.clan.core.vars.generators);
  userSecrets = lib.any (gen: lib.any (file: file.neededFor == "users") (lib.attrValues gen.files)) (
    lib.attrValues config.clan.core.vars.generators
  );

in
{
  options.clan.core.vars.password-store = {
    secretLocation = lib.mkOption {
      type = lib.types.path;
      default = "/etc/secret-vars";
      description = ''
        location where the tarball with the password-store secrets will be uploaded to and the manifest
      '';
    };
    passCommand = lib.mkOption {
      type = lib.types.enum [
        "pass"
        "passage"
      ];
      default = "passage";
      description = ''
        Password store command to use, must be available in PATH. E.g.
        - "pass": GPG-based password store
        - "passage": age-based password store
      '';
    };
  };
  config = {
    clan.core.vars.settings.fileModule =
      lib.mkIf (config.clan.core.vars.settings.secretStore == "password-store")
        (
          file:
          lib.mkIf file.config.secret {
            path =
              if file.config.neededFor == "users" then
                "/run/user-secrets/${file.config.rel_dir}/${file.config.name}"
              else if file.config.neededFor == "services" then
                "/run/secrets/${file.config.rel_dir}/${file.config.name}"
              else if file.config.neededFor == "activation" then
                "${config.clan.core.vars.password-store.secretLocation}/activation/${file.config.rel_dir}/${file.config.name}"
              else if file.config.neededFor == "partitioning" then
                "/run/partitioning-secrets/${file.config.rel_dir}/${file.config.name}"
              else
                throw "unknown neededFor ${file.config.neededFor}";

          }
        );
  }
  # NixOS-specific options (not applicable to Darwin)
  // lib.optionalAttrs (_class == "nixos") {
    system.activationScripts =
      lib.mkIf ((config.clan.core.vars.settings.secretStore == "password-store") && !useSystemdActivation)
        {
          setupUserSecrets = lib.mkIf userSecrets (
            lib.stringAfter
              [
                "specialfs"
              ]
              ''
                [ -e /run/current-system ] || echo setting up secrets...
                ${installSecretTarball}/bin/install-secret-tarball ${config.clan.core.vars.password-store.secretLocation}/secrets_for_users.tar.gz /run/user-secrets
              ''
            // lib.optionalAttrs (config.system ? dryActivationScript) {
              supportsDryActivation = true;
            }
          );
          users.deps = lib.mkIf userSecrets [ "setupUserSecrets" ];
          setupSecrets = lib.mkIf normalSecrets (
            lib.stringAfter
              [
                "specialfs"
                "users"
                "groups"
              ]
              ''
                [ -e /run/current-system ] || echo setting up secrets...
                ${installSecretTarball}/bin/install-secret-tarball ${config.clan.core.vars.password-store.secretLocation}/secrets.tar.gz /run/secrets
              ''
            // lib.optionalAttrs (config.system ? dryActivationScript) {
              supportsDryActivation = true;
            }
          );
        };
    systemd.services =
      lib.mkIf ((config.clan.core.vars.settings.secretStore == "password-store") && useSystemdActivation)
        {
          pass-install-user-secrets = lib.mkIf userSecrets {
            wantedBy = [ "systemd-sysusers.service" ];
            before = [ "systemd-sysusers.service" ];
            unitConfig.DefaultDependencies = "no";

            serviceConfig = {
              Type = "oneshot";
              ExecStart = [
                "${installSecretTarball}/bin/install-secret-tarball ${config.clan.core.vars.password-store.secretLocation}/secrets_for_users.tar.gz /run/user-secrets"
              ];
              RemainAfterExit = true;
            };
          };
          pass-install-secrets = lib.mkIf normalSecrets {
            wantedBy = [ "sysinit.target" ];
            after = [ "systemd-sysusers.service" ];
            unitConfig.DefaultDependencies = "no";

            serviceConfig = {
              Type = "oneshot";
              ExecStart = [
                "${installSecretTarball}/bin/install-secret-tarball ${config.clan.core.vars.password-store.secretLocation}/secrets.tar.gz /run/secrets"
              ];
              RemainAfterExit = true;
            };
          };
        };
  };

}
