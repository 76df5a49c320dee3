# vmcred guest module: runs the vmcred guest agent at boot, so that the
# credentials the host sent (SMBIOS type 11, QEMU fw_cfg or the vsock channel)
# are verified before any service sees them, and land in /run/credstore where
# LoadCredential=NAME finds them.
#
# The unit below mirrors guest/systemd/vmcred-guest.service directive for
# directive (nixos-modules/units_test.go compares them); change both together.
#
# Tested offline with nixpkgs' real lib and microvm.nix's real modules
# (tests/harness.nix, tests/guest-harness.nix; nixos-modules/README.md).
{ config, lib, pkgs, options, ... }:

let
  inherit (lib) mkOption mkIf types;

  cfg = config.services.vmcred-guest;

  # Fixed, like the paths in guest/systemd/vmcred-guest.service.
  statusDir = "/run/vmcred";
  trustDir = "/etc/vmcred/trusted.d";
  systemCredentials = "/run/credentials/@system";
  # Where the unit binds systemCredentials: systemd 252 hides /run/credentials
  # from a sandboxed unit even when bound at the same path (see the unit file).
  boundSystemCredentials = "/run/vmcred-system-credentials";
  publicKeyHeader = "vmcred-ed25519-public ";

  # ExecStart arguments are joined with spaces, unquoted: keep them to
  # characters that need no quoting or escaping in a unit file (no
  # whitespace, quotes, %, $ or backslash).
  safeArg = "[A-Za-z0-9_./:=@+,-]+";

  keyIsText = k: builtins.isString k && lib.hasPrefix publicKeyHeader k;

  trustedKeyFiles = lib.listToAttrs (lib.imap1
    (i: k: lib.nameValuePair "vmcred/trusted.d/key-${toString i}.pub" (
      # Regular files (mode set), not symlinks into the store: the agent may
      # refuse to follow symlinks.
      { mode = "0444"; }
      // (if keyIsText k then { text = k; } else { source = k; })
    ))
    # A string that is not a key fails the assertion below instead of a
    # confusing type error on environment.etc.
    (lib.filter (k: !builtins.isString k || keyIsText k) cfg.trustedKeys));

  loadArgs =
    [ "load" "--credstore" cfg.credstore "--status-dir" statusDir ]
    ++ lib.optionals (cfg.trustedKeys != [ ]) [ "--trust-key" trustDir ]
    ++ [ "--system-credentials" boundSystemCredentials ]
    ++ lib.optionals (cfg.channel != null) [ "--channel" cfg.channel ]
    ++ lib.optional cfg.allowUnverified "--allow-unverified"
    ++ cfg.extraArgs;

  credstoreRuntimeDir = lib.removePrefix "/run/" cfg.credstore;
  statusRuntimeDir = lib.removePrefix "/run/" statusDir;

  consumerUnits = map (lib.removeSuffix ".service") cfg.consumers;
  # What a consumer unit has when something defines it besides the
  # requires/after below.
  definedService = u:
    let s = config.systemd.services.${u} or { }; in
    (s.script or "") != "" || (s.serviceConfig.ExecStart or null) != null;
  missingConsumers = lib.filter (u: !(definedService u)) consumerUnits;
in
{
  # One module however it is imported (this file by path, the flake's
  # nixosModules.guest, vmcred's host module for declared VMs): NixOS
  # de-duplicates imports by key.
  key = "github.com/vmcred/vmcred/nixos-modules/guest.nix";
  _file = "vmcred/nixos-modules/guest.nix";

  options.services.vmcred-guest = {
    hostVM = mkOption {
      type = types.nullOr (types.strMatching "[A-Za-z0-9_][A-Za-z0-9_.-]*");
      default = null;
      example = "test-vm";
      description = ''
        For a microvm.nix VM whose configuration the host's vmcred module
        cannot extend (microvm.vms.<name>.flake, evaluatedConfig, or an
        imperative `microvm -c` VM): its name in the host's
        services.vmcred.vms. Sets `microvm.extraArgsScript` to
        /etc/vmcred/vms/<name>/extra-args, the script the host installs for
        that VM, and for cloud-hypervisor and Firecracker `channel` to
        `vsock-stream:2:8889` (the host's default `channel.port`; set
        `channel` for another). (VMs declared in
        microvm.vms.<name>.config are wired by the host module; leave this
        null there.)
      '';
    };

    enable = lib.mkEnableOption "the vmcred guest agent (vmcred-guest.service), which loads, verifies and exposes the credentials the VM host sent";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage <vmcred/nixos-modules/package.nix> { }";
      description = "The vmcred package; the unit runs its `bin/vmcred-guest`.";
    };

    trustedKeys = mkOption {
      type = types.listOf (types.either types.path types.str);
      default = [ ];
      example = lib.literalExpression ''
        [ ./keys/host.pub
          config.clan.core.vars.generators.vmcred-signing.files."signing.pub".value ]
      '';
      description = ''
        Ed25519 public keys the host signs its manifest with (files written by
        `vmcred-host keygen --out PREFIX`, `PREFIX.pub`). Each item is a path
        to such a file, or its content as a string
        (`"vmcred-ed25519-public <base64>"`). They are installed in
        `/etc/vmcred/trusted.d/` and the agent gets `--trust-key
        /etc/vmcred/trusted.d`; a manifest must then carry a valid signature
        by one of them. With no keys the agent still checks that every
        credential is complete (size and SHA-256 from the manifest), but not
        who sent it.
      '';
    };

    mode = mkOption {
      type = types.enum [ "verified" "systemd" ];
      default = "verified";
      description = ''
        Must match the host's `services.vmcred.vms.<name>.mode`.

        `verified`: the host writes credentials under vmcred's own prefix,
        which systemd ignores; only what the agent verified reaches services,
        through /run/credstore.

        `systemd`: the host writes `io.systemd.credential.binary:` strings, so
        PID 1 also imports them into /run/credentials/@system, which
        `LoadCredential=` searches first. The agent then also checks that copy
        against the manifest (`--system-credentials`), so that what systemd
        252-256 truncated (it reads only about 4 KiB of OEM strings) fails
        the agent instead of reaching a service; and dmi-sysfs and
        qemu_fw_cfg are loaded in the initrd, where PID 1 imports credentials.
      '';
    };

    credstore = mkOption {
      type = types.strMatching "/run/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*";
      default = "/run/credstore";
      description = ''
        Where the agent writes verified credentials (a folder under /run, on
        tmpfs, 0700; files 0400). Only `/run/credstore` is on systemd's
        credential search path; with another folder, services must use
        `LoadCredential=ID:/that/folder/NAME`.
      '';
    };

    consumers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "demo-oem-credentials" ];
      description = ''
        Services (names in `systemd.services`, with or without `.service`)
        that use vmcred credentials. Each gets `requires` and `after` on
        vmcred-guest.service, so it does not start when a credential is
        missing, truncated or unsigned (`LoadCredential=NAME` alone would
        start it without the file).
      '';
    };

    channel = mkOption {
      type = types.nullOr (types.strMatching "((vsock|vsock-stream):[0-9]+:[0-9]+|unix:/${safeArg})");
      default = null;
      example = "vsock:2:8889";
      description = ''
        Address of the host's vmcred channel (`--channel`). Normally the
        manifest carries it; set it where no manifest reaches the VM through
        firmware (Firecracker, and cloud-hypervisor under microvm.nix). The
        host module sets it for VMs it wires (`services.vmcred.vms`).
      '';
    };

    allowUnverified = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Accept credentials that come without a manifest
        (`--allow-unverified`). For migrating from hand-written OEM strings
        only: nothing then proves the credentials are complete or from the host.
      '';
    };

    kernelModules = mkOption {
      type = types.listOf types.str;
      default = [ "dmi-sysfs" "qemu_fw_cfg" "vmw_vsock_virtio_transport" ];
      description = ''
        Kernel modules the agent needs, loaded by systemd-modules-load
        before it (same list as guest/systemd/modules-load.d/vmcred.conf):
        dmi-sysfs (SMBIOS entries), qemu_fw_cfg (fw_cfg credentials),
        vmw_vsock_virtio_transport (channel and report). Built-in modules are
        fine; drop what the kernel lacks.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf (types.strMatching safeArg);
      default = [ ];
      example = [ "--timeout" "60s" ];
      description = "More `vmcred-guest load` flags (no spaces, quotes, % or $).";
    };
  };

  config = lib.mkMerge [
  (lib.optionalAttrs (options ? microvm && options.microvm ? extraArgsScript) {
    microvm.extraArgsScript = mkIf (cfg.hostVM != null) "/etc/vmcred/vms/${cfg.hostVM}/extra-args";
    # Hybrid vsock: no manifest reaches the VM by firmware, so the agent
    # must be told where the channel is: the host module's default port.
    services.vmcred-guest.channel = mkIf (cfg.hostVM != null && builtins.elem config.microvm.hypervisor [ "cloud-hypervisor" "firecracker" ])
      (lib.mkDefault "vsock-stream:2:8889");
  })
  (mkIf cfg.enable {
    assertions = [
      {
        assertion = missingConsumers == [ ];
        message = "services.vmcred-guest.consumers names ${lib.concatStringsSep ", " missingConsumers}, which this configuration does not define (no script or ExecStart in systemd.services): a typo would give vmcred-guest a consumer that never runs.";
      }
      {
        assertion = lib.all (k: !builtins.isString k || keyIsText k) cfg.trustedKeys;
        message = ''
          services.vmcred-guest.trustedKeys: a string must be the key itself
          ("${publicKeyHeader}<base64>", the content of PREFIX.pub from
          vmcred-host keygen); give a key file as a path.
        '';
      }
      {
        assertion = !(cfg.trustedKeys != [ ] && cfg.allowUnverified);
        message = "services.vmcred-guest: allowUnverified contradicts trustedKeys (a signature needs a manifest).";
      }
    ];

    warnings = lib.optional (cfg.trustedKeys == [ ] && !cfg.allowUnverified) ''
      services.vmcred-guest.trustedKeys is empty: the agent checks that
      credentials are complete but not that the host sent them. Add the
      public key of the host's services.vmcred.vms.<name>.signingKeyFile.
    '';

    boot.kernelModules = cfg.kernelModules;
    # PID 1 imports SMBIOS and fw_cfg credentials once, at its start (in the
    # initrd when stage 1 runs systemd), before systemd-modules-load runs.
    boot.initrd.kernelModules = lib.optionals (cfg.mode == "systemd")
      (lib.filter (m: m != "vmw_vsock_virtio_transport") cfg.kernelModules);

    environment.etc = trustedKeyFiles;
    # vmcred-guest list / show / verify / status for debugging.
    environment.systemPackages = [ cfg.package ];

    systemd.services = lib.mkMerge [
      {
        vmcred-guest = {
          description = "vmcred: load and verify credentials from the VM host";
          documentation = [ "https://github.com/vmcred/vmcred" ];
          wantedBy = [ "sysinit.target" ];
          wants = [ "systemd-modules-load.service" ];
          after = [ "systemd-modules-load.service" "local-fs.target" ];
          before = [ "sysinit.target" "shutdown.target" ];
          conflicts = [ "shutdown.target" ];
          # Re-running the agent on `switch` would re-read the firmware and
          # present a spent channel token; credentials are per boot.
          restartIfChanged = false;
          unitConfig.DefaultDependencies = false;
          serviceConfig = {
            Type = "notify";
            NotifyAccess = "main";
            RemainAfterExit = true;
            ExecStart = "${cfg.package}/bin/vmcred-guest ${lib.concatStringsSep " " loadArgs}";
            BindReadOnlyPaths = [ "-${systemCredentials}:${boundSystemCredentials}" ];
            TimeoutStartSec = "90s";
            RuntimeDirectory = [ credstoreRuntimeDir statusRuntimeDir ];
            RuntimeDirectoryMode = "0700";
            RuntimeDirectoryPreserve = true;
            ReadWritePaths = [ cfg.credstore statusDir ];
            UMask = "0077";
            StandardOutput = "journal+console";
            StandardError = "journal+console";

            CapabilityBoundingSet = "";
            NoNewPrivileges = true;
            RestrictAddressFamilies = [ "AF_UNIX" "AF_VSOCK" ];
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateDevices = true;
            PrivateIPC = true;
            ProtectHostname = true;
            ProtectClock = true;
            ProtectKernelTunables = true;
            ProtectKernelModules = true;
            ProtectKernelLogs = true;
            ProtectControlGroups = true;
            ProtectProc = "invisible";
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
            SystemCallErrorNumber = "EPERM";
          };
        };
      }
      (lib.genAttrs consumerUnits (_: {
        requires = [ "vmcred-guest.service" ];
        after = [ "vmcred-guest.service" ];
      }))
    ];
  })
  ];
}
