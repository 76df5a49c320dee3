# vmcred guest module: runs the vmcred guest agent (`vmcred-guest agent`)
# from early boot for the life of the boot. It loads what firmware carries
# (SMBIOS type 11, QEMU fw_cfg), listens on a privileged vsock port (only
# root can bind it, so the host knows who answers) for the host's signed
# sessions (`vmcred-host push`), verifies everything before any service
# sees it, and keeps the credentials in /run/credstore, where
# LoadCredential=NAME finds them. A later session with changed values
# (rotation) swaps the store all or nothing and restarts the services that
# use a changed credential, over systemd's private D-Bus socket.
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
  # Read directly: the unit has no mount namespace, which in systemd 252
  # would hide /run/credentials from it (see the unit file).
  systemCredentials = "/run/credentials/@system";
  publicKeyHeader = "vmcred-ed25519-public ";
  # The VM's name, which every session's manifest must be issued for
  # (vmcred-guest agent --vm-file; debug commands read it too).
  vmNameFile = "/etc/vmcred/vm-name";
  nameRe = "[A-Za-z0-9_][A-Za-z0-9_.-]*";

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

  agentArgs =
    [ "agent" "--vm-file" vmNameFile "--listen" "vsock::${toString cfg.port}"
      "--credstore" cfg.credstore "--status-dir" statusDir "--trust-key" trustDir
      "--system-credentials" systemCredentials ]
    ++ cfg.extraArgs;


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

  imports = [
    (lib.mkRemovedOptionModule [ "services" "vmcred-guest" "channel" ] "The agent no longer dials the host: it listens on services.vmcred-guest.port and the host dials it (vmcred-host push).")
    (lib.mkRemovedOptionModule [ "services" "vmcred-guest" "allowUnverified" ] "The agent always requires a manifest signed by one of services.vmcred-guest.trustedKeys.")
  ];

  options.services.vmcred-guest = {
    hostVM = mkOption {
      type = types.nullOr (types.strMatching "[A-Za-z0-9_][A-Za-z0-9_.-]*");
      default = null;
      example = "test-vm";
      description = ''
        For a microvm.nix VM whose configuration the host's vmcred module
        cannot extend (microvm.vms.<name>.flake, evaluatedConfig, or an
        imperative `microvm -c` VM): its name in the host's
        services.vmcred.vms. Makes it the agent's `vmName`, and for QEMU
        sets `microvm.extraArgsScript` to /etc/vmcred/vms/<name>/extra-args,
        the script the host installs for that VM (firmware credentials).
        (VMs declared in microvm.vms.<name>.config are wired by the host
        module; leave this null there.)
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
        `/etc/vmcred/trusted.d/` (`--trust-key /etc/vmcred/trusted.d`).
        Required: the agent accepts only a manifest signed by one of them
        for this VM (and, in a session, for its own challenge).
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

    vmName = mkOption {
      type = types.nullOr (types.strMatching nameRe);
      default = if cfg.hostVM != null then cfg.hostVM else
        let h = config.networking.hostName or ""; in if builtins.match nameRe h != null then h else null;
      defaultText = lib.literalExpression "the VM's name in the host's services.vmcred.vms (set by the host module; hostVM), else networking.hostName";
      example = "test-vm";
      description = ''
        The VM's name as the host's `vmcred-host push --vm` gives it (its
        name in services.vmcred.vms): every session's manifest is signed
        for one VM, and the agent refuses another's. Written to
        ${vmNameFile} (root, 0444), which the agent reads
        (`--vm-file`).
      '';
    };

    port = mkOption {
      # Checked by an assertion (1-1023) that says why.
      type = types.ints.unsigned;
      default = 730;
      description = ''
        The privileged vsock port the agent listens on (`--listen
        vsock::PORT`); the host dials it (services.vmcred.vms.<name>.channel.port,
        which the host module copies here for VMs it wires). Only root can
        bind a port up to 1023, which is what makes the answer trustworthy.
      '';
    };

    kernelModules = mkOption {
      type = types.listOf types.str;
      default = [ "dmi-sysfs" "qemu_fw_cfg" "vmw_vsock_virtio_transport" ];
      description = ''
        Kernel modules the agent needs, loaded by systemd-modules-load
        before it (same list as guest/systemd/modules-load.d/vmcred.conf):
        dmi-sysfs (SMBIOS entries), qemu_fw_cfg (fw_cfg credentials),
        vmw_vsock_virtio_transport (the host's sessions). Built-in modules are
        fine; drop what the kernel lacks.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf (types.strMatching safeArg);
      default = [ ];
      example = [ "--timeout" "60s" ];
      description = "More `vmcred-guest agent` flags (no spaces, quotes, % or $).";
    };
  };

  config = lib.mkMerge [
  (lib.optionalAttrs (options ? microvm && options.microvm ? extraArgsScript) {
    # Firmware credentials (QEMU): the host's pack, installed for this VM.
    # cloud-hypervisor and Firecracker get everything in the push session.
    microvm.extraArgsScript = mkIf (cfg.hostVM != null && !(builtins.elem config.microvm.hypervisor [ "cloud-hypervisor" "firecracker" ]))
      "/etc/vmcred/vms/${cfg.hostVM}/extra-args";
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
        assertion = cfg.trustedKeys != [ ];
        message = "services.vmcred-guest.trustedKeys is empty: the agent accepts only a manifest signed by a trusted key. Add the public key of the host's services.vmcred.vms.<name>.signingKeyFile (PREFIX.pub from vmcred-host keygen, or its clan vars file's value).";
      }
      {
        assertion = cfg.port >= 1 && cfg.port <= 1023;
        message = "services.vmcred-guest.port = ${toString cfg.port}: the agent listens only on a privileged vsock port (1-1023; default 730), which only root can bind: that is what lets the host trust whoever answers.";
      }
      {
        assertion = cfg.vmName != null;
        message = "services.vmcred-guest.vmName is not set and networking.hostName is no VM name: set vmName (or hostVM) to the VM's name in the host's services.vmcred.vms; the agent refuses sessions for any other VM.";
      }
    ];

    environment.etc = trustedKeyFiles // lib.optionalAttrs (cfg.vmName != null) {
      # A regular file (mode set), root-owned, not writable by others: the
      # agent checks it like a trust key.
      "vmcred/vm-name" = { text = "${cfg.vmName}\n"; mode = "0444"; };
    };

    boot.kernelModules = cfg.kernelModules;
    # PID 1 imports SMBIOS and fw_cfg credentials once, at its start (in the
    # initrd when stage 1 runs systemd), before systemd-modules-load runs.
    boot.initrd.kernelModules = lib.optionals (cfg.mode == "systemd")
      (lib.filter (m: m != "vmw_vsock_virtio_transport") cfg.kernelModules);

    # vmcred-guest list / show / verify / status for debugging.
    environment.systemPackages = [ cfg.package ];

    systemd.services = lib.mkMerge [
      {
        vmcred-guest = {
          description = "vmcred: load, verify and rotate credentials from the VM host";
          documentation = [ "https://github.com/vmcred/vmcred" ];
          wantedBy = [ "sysinit.target" ];
          wants = [ "systemd-modules-load.service" ];
          after = [ "systemd-modules-load.service" "local-fs.target" ];
          before = [ "sysinit.target" "shutdown.target" ];
          conflicts = [ "shutdown.target" ];
          # Not restarted on `switch`: a restarted agent sends READY=1 only
          # after the host's next push, so the switch would wait for it.
          restartIfChanged = false;
          unitConfig.DefaultDependencies = false;
          serviceConfig = {
            Type = "notify";
            NotifyAccess = "main";
            ExecStart = "${cfg.package}/bin/vmcred-guest ${lib.concatStringsSep " " agentArgs}";
            Restart = "on-failure";
            TimeoutStartSec = "180s";
            # No RuntimeDirectory=: a sandboxed unit gets it bound on
            # itself, and a mount point cannot be exchanged by a rotation;
            # the agent creates its folders (root, 0700).
            UMask = "0077";
            StandardOutput = "journal+console";
            StandardError = "journal+console";

            # Kernel-level limits only, no mount namespace: the threat
            # model and the boot cost are in the unit file's comments.
            CapabilityBoundingSet = "CAP_NET_BIND_SERVICE";
            NoNewPrivileges = true;
            RestrictAddressFamilies = [ "AF_UNIX" "AF_VSOCK" ];
            DevicePolicy = "closed";
            ProtectClock = true;
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
