# vmcred host module: hands secrets to microvm.nix VMs as verified systemd
# credentials.
#
# For every services.vmcred.vms.<name>:
#  - microvm@<name>.service gets a drop-in with LoadCredential=ID:PATH. The
#    secret files stay root:root 0400 (clan vars and sops defaults); systemd
#    copies them into that one unit's private $CREDENTIALS_DIRECTORY. No
#    `group = "kvm"`, which would let every VM (and every member of group
#    kvm) read every VM's secrets, at any time.
#  - the same drop-in adds RuntimeDirectory=vmcred-<name> (0700, deleted
#    when the VM stops) for the per-boot files vmcred-host writes there.
#  - the VM's microvm.extraArgsScript runs `vmcred-host pack`, which packs
#    the credentials, the static strings and a signed manifest into files
#    in that folder and prints the hypervisor arguments that point at them
#    (never a secret in argv), and starts `vmcred-host serve` for the vsock
#    channel and the guest's report, failing the VM's start if serve does
#    not come up. VMs declared in microvm.vms.<name>.config get it (and the
#    guest module) through microvm.nix's extraModules; every VM's script is
#    also at /etc/vmcred/vms/<name>/extra-args, for VMs built from a flake
#    or by `microvm -c` (guest.nix: services.vmcred-guest.hostVM). This
#    module adds no microvm.vms entry.
#  - vmcred-ready@<name>.service (oneshot, `vmcred-host wait`) becomes
#    active once the guest agent reported that every credential arrived
#    intact; other host units order after it.
#
# Evaluates without microvm.nix (then services.vmcred.vms must be empty).
# Tested offline with nixpkgs' real lib and microvm.nix's real modules
# (tests/harness.nix, tests/guest-harness.nix; nixos-modules/README.md).
{ config, lib, pkgs, options, ... }:

let
  config' = config;
  inherit (lib) mkOption mkIf types;

  cfg = config.services.vmcred;

  # The module's definitions carry this file name (see _file below).
  moduleFile = "vmcred/nixos-modules/host.nix";

  # microvm.nix's host module declares microvm.host.enable (this module
  # declares microvm.vms too, to add the guest wiring to declared VMs).
  hasMicrovm = options ? microvm && options.microvm ? host;
  stateDir = if hasMicrovm then config.microvm.stateDir else "/var/lib/microvms";

  vmcredHost = "${cfg.package}/bin/vmcred-host";

  # Names end up in unit names, paths, LoadCredential=ID:PATH and hypervisor
  # arguments that the runner word-splits: keep them plain.
  nameRe = "[A-Za-z0-9_][A-Za-z0-9_.-]*";
  validName = n: builtins.match nameRe n != null;
  # LoadCredential ID of the signing key in $CREDENTIALS_DIRECTORY; the
  # vmcred. prefix is reserved (vmcred.manifest is the manifest's name).
  signingKeyId = "vmcred.signing-key";
  reservedName = n: lib.hasPrefix "vmcred." n;

  rm = "${pkgs.coreutils}/bin/rm";
  sleep = "${pkgs.coreutils}/bin/sleep";
  # How long the args script waits for `vmcred-host serve` to listen.
  serveStartSeconds = 10;

  defaultPort = 8889; # microvm.nix's cloud-hypervisor runner owns 8888 (socat notify bridge)
  defaultWaitSeconds = 120;
  # Hypervisors whose vsock is a Unix socket on the host (<socket>_<port>).
  hybridVsock = h: builtins.elem h [ "cloud-hypervisor" "firecracker" ];

  absolutePath = p: lib.hasPrefix "/" p && !(lib.hasPrefix "/nix/store" p);
  # LoadCredential= expands specifiers in PATH.
  unitPath = lib.replaceStrings [ "%" ] [ "%%" ];

  # The VM's evaluated NixOS configuration, found the way microvm.nix finds
  # it; null for a VM microvm.nix does not know.
  inMicrovmVms = name: hasMicrovm && config.microvm.vms ? ${name};

  guestOf = name:
    let
      vm = config.microvm.vms.${name};
    in
    if !(inMicrovmVms name) then null
    else if vm.flake != null then vm.flake.nixosConfigurations.${name}.config
    else if (vm.evaluatedConfig or null) != null then vm.evaluatedConfig.config
    else if vm.config != null then vm.config.config
    else null;

  # Only a VM declared in this configuration (microvm.vms.<name>.config) can
  # be given its extraArgsScript from here.
  declarative = name:
    inMicrovmVms name
    && config.microvm.vms.${name}.flake == null
    # (older microvm.nix has no evaluatedConfig option)
    && (config.microvm.vms.${name}.evaluatedConfig or null) == null;

  # Where the host installs each VM's extraArgsScript at a fixed path, for
  # VMs whose configuration is built elsewhere (microvm.vms.<name>.flake,
  # evaluatedConfig, or `microvm -c` without microvm.vms): their
  # configuration sets microvm.extraArgsScript to this path
  # (services.vmcred-guest.hostVM = "<name>" in guest.nix does).
  etcArgsScript = name: "/etc/vmcred/vms/${name}/extra-args";

  # QEMU's fw_cfg carrier, where there is no SMBIOS: the `microvm` machine,
  # and aarch64's `virt` with direct kernel boot (microvm.nix's default on
  # aarch64), whose firmware tables the guest does not see.
  fwCfgMachine = m: m == "microvm" || lib.hasPrefix "virt" m;

  # cloud-hypervisor's vsock socket: microvm.nix's runner uses
  # notify.vsock (relative to the VM's folder) unless
  # microvm.cloud-hypervisor.extraArgs has `--vsock …,socket=PATH`.
  chVsockSocket = name: guest:
    let
      args = guest.microvm.cloud-hypervisor.extraArgs or [ ];
      values = lib.concatLists (lib.imap0 (i: a:
        if a == "--vsock" && i + 1 < builtins.length args then [ (builtins.elemAt args (i + 1)) ]
        else if lib.hasPrefix "--vsock=" a then [ (lib.removePrefix "--vsock=" a) ]
        else [ ]) args);
      sockets = lib.concatMap (v: let m = builtins.match "(.*,)?socket=([^,]+)(,.*)?" v; in lib.optional (m != null) (builtins.elemAt m 1)) values;
      socket = if sockets == [ ] then "notify.vsock" else builtins.head sockets;
    in
    if lib.hasPrefix "/" socket then socket else "${stateDir}/${name}/${socket}";

  detectHypervisor = guest:
    if guest == null then null
    else
      let h = guest.microvm.hypervisor; in
      if h == "qemu" then (if fwCfgMachine (guest.microvm.qemu.machine or "") then "qemu-microvm" else "qemu")
      else if builtins.elem h [ "cloud-hypervisor" "firecracker" ] then h
      else "unsupported hypervisor ${h}";

  # Everything derived for one VM.
  vmInfo = name: vm: rec {
    guest = guestOf name;
    detected = detectHypervisor guest;
    hypervisor = if vm.hypervisor != null then vm.hypervisor else detected;
    hybrid = hybridVsock hypervisor;

    runtimeDir = "/run/vmcred-${name}";
    credNames = builtins.attrNames vm.credentials;
    staticNames = builtins.attrNames vm.static;
    hasCredentials = credNames != [ ] || vm.signingKeyFile != null;

    cid =
      if vm.channel.cid != null then vm.channel.cid
      else if guest != null then guest.microvm.vsock.cid
      else null;
    port = vm.channel.port;
    # What the guest dials: the host is CID 2 for every hypervisor; with
    # hybrid vsock the VMM connects that to <socket>_<port> on the host.
    # Hybrid-vsock VMs get it on the agent's command line (--channel, the
    # stream form): no firmware manifest reaches them (bootstrap mode).
    channelAddress = if hybrid then "vsock-stream:2:${toString port}" else "vsock:2:${toString port}";
    vsockSocket = if hypervisor == "cloud-hypervisor" && guest != null then chVsockSocket name guest else "${stateDir}/${name}/notify.vsock";
    listenPath = "${vsockSocket}_${toString port}";
    # QEMU (vhost-vsock): any local CID, so that listening does not depend on
    # vhost_vsock being loaded yet (CID 2 is only there once it is);
    # --expect-cid keeps other VMs out.
    listenAddress = if hybrid then "unix:${listenPath}" else "vsock:any:${toString port}";
    statusFile = "${runtimeDir}/${name}.json";

    waitSeconds =
      if vm.waitReady == true then defaultWaitSeconds
      else if vm.waitReady == false then null
      else vm.waitReady;
    readyUnit = "vmcred-ready@${name}.service";

    packArgs =
      [ "pack" "--vm" name "--hypervisor" hypervisor ]
      ++ lib.optional (credNames != [ ]) "--from-credentials-directory=${lib.concatStringsSep "," credNames}"
      ++ lib.concatMap (n: [ "--static" "${n}=${vm.static.${n}}" ]) staticNames
      ++ [ "--mode" vm.mode "--runtime-dir" runtimeDir "--overflow" vm.channel.overflow ]
      ++ lib.optionals vm.channel.enable [ "--channel" channelAddress ]
      # cloud-hypervisor under microvm.nix: the runner passes its own single
      # --platform, so no OEM string can be added; Firecracker has no
      # firmware carrier at all. The signed manifest goes by channel too
      # (bootstrap mode; tokenless: see vmcred's README, "Security model").
      ++ lib.optional hybrid "--manifest-by-channel";

    serveArgs =
      [ "serve" "--vm" name "--listen" listenAddress "--runtime-dir" runtimeDir "--status-dir" runtimeDir ]
      ++ lib.optionals (!hybrid && cid != null) [ "--expect-cid" (toString cid) ];

    loadCredentials =
      map (n: "${n}:${unitPath vm.credentials.${n}.file}") (lib.filter (n: !vm.credentials.${n}.encrypted) credNames)
      ++ lib.optional (vm.signingKeyFile != null) "${signingKeyId}:${unitPath vm.signingKeyFile}";
    loadCredentialsEncrypted =
      map (n: "${n}:${unitPath vm.credentials.${n}.file}") (lib.filter (n: vm.credentials.${n}.encrypted) credNames);

    # microvm.nix's runner does
    #   runtime_args=$(<this script>)
    #   exec <hypervisor> <its args> ${runtime_args:-}
    # unquoted, so the output is split at whitespace and glob-expanded, and
    # its contract (microvm.extraArgsScript) is one line of arguments. The
    # script therefore takes pack's NUL-separated output (--print0), refuses
    # any argument containing whitespace or a glob character, and prints
    # them on one line. vmcred-host pack prints only absolute paths under
    # runtimeDir and base64, which contain neither, so the check never
    # fires unless pack is broken; then the VM does not start, rather than
    # starting with a mangled argument.
    #
    # microvm@<name> runs with `path = [ ]` (microvm.nix; this module's
    # drop-in too): every program here is named by its store path.
    script = pkgs.writeShellScript "vmcred-args-${name}" ''
      # microvm.extraArgsScript for ${name}, generated by vmcred
      # (nixos-modules/host.nix). Prints the hypervisor arguments that
      # vmcred-host pack adds, on one line.
      set -euo pipefail
      ${lib.optionalString hasCredentials ''
        : "''${CREDENTIALS_DIRECTORY:?vmcred: no \$CREDENTIALS_DIRECTORY: is the vmcred drop-in on microvm@${name}.service active?}"''}
      rd=${lib.escapeShellArg runtimeDir}
      ${lib.escapeShellArg vmcredHost} ${lib.escapeShellArgs packArgs}${lib.optionalString (vm.signingKeyFile != null) " --sign-key \"$CREDENTIALS_DIRECTORY/${signingKeyId}\""} --print0 >"$rd/hypervisor-args"
      mapfile -d "" -t args <"$rd/hypervisor-args"
      ${rm} -f -- "$rd/hypervisor-args"
      for i in "''${!args[@]}"; do
        case "''${args[$i]}" in
          "" | *[[:space:]]* | *[][*?]*)
            echo "vmcred: vmcred-host pack printed hypervisor argument $i with whitespace or a glob character; the microvm.nix runner would split or expand it" >&2
            exit 1
            ;;
        esac
      done
      ${lib.optionalString vm.channel.enable ''
        # Channel and report server. A child of the runner, like microvm.nix's
        # socat notify bridge: it lives in microvm@${name}.service's cgroup and
        # stops with the VM. NOTIFY_SOCKET is dropped: microvm.nix decides
        # when the VM unit is ready; vmcred's readiness is ${readyUnit}.
        ${rm} -f -- ${lib.escapeShellArg statusFile}${lib.optionalString hybrid " ${lib.escapeShellArg listenPath}"}
        (unset NOTIFY_SOCKET; exec ${lib.escapeShellArg vmcredHost} ${lib.escapeShellArgs serveArgs}) </dev/null >&2 &
        serve=$!
        # serve writes its status file once it listens. Until then the VM
        # does not start: a bind failure or an early exit fails microvm@${name}
        # (and shows in its journal) instead of leaving a VM without channel.
        for ((n = 0; n < ${toString (serveStartSeconds * 10)}; n++)); do
          [[ -e ${lib.escapeShellArg statusFile} ]] && break
          if ! kill -0 "$serve" 2>/dev/null; then
            st=0; wait "$serve" || st=$?
            echo "vmcred: vmcred-host serve for ${name} exited (status $st) before listening on ${listenAddress}" >&2
            exit 1
          fi
          ${sleep} 0.1
        done
        if [[ ! -e ${lib.escapeShellArg statusFile} ]]; then
          kill "$serve" 2>/dev/null || true
          echo "vmcred: vmcred-host serve for ${name} did not listen on ${listenAddress} within ${toString serveStartSeconds} s" >&2
          exit 1
        fi
        # Payload files the hypervisor reads at its start (SMBIOS and fw_cfg
        # files): deleted once the guest has reported, long after the
        # hypervisor read them, as vmcred-host run deletes them; the rest go
        # with the runtime folder when the VM stops.
        payload=()
        for a in "''${args[@]}"; do
          if [[ $a =~ (path|file)=($rd/[^,]+) ]]; then payload+=("''${BASH_REMATCH[2]}"); fi
        done
        if ((''${#payload[@]})); then
          (
            while [[ -e ${lib.escapeShellArg statusFile} && $(<${lib.escapeShellArg statusFile}) =~ \"state\":[[:space:]]*\"waiting\" ]]; do ${sleep} 1; done
            ${rm} -f -- "''${payload[@]}"
          ) </dev/null >/dev/null 2>&1 &
        fi
      ''}
      echo "''${args[*]}"
    '';
  };

  vmModule = { name, config, ... }: {
    options = {
      hypervisor = mkOption {
        type = types.nullOr (types.enum [ "qemu" "qemu-microvm" "cloud-hypervisor" "firecracker" ]);
        default = null;
        description = ''
          The VM's hypervisor, which decides how credentials travel: QEMU
          q35/pc by SMBIOS files (`-smbios type=11,path=`), QEMU's `microvm`
          machine (no SMBIOS) by fw_cfg files, cloud-hypervisor and
          Firecracker by the vsock channel. `null`: taken from the VM's
          microvm.nix configuration (`microvm.hypervisor`, and
          `microvm.qemu.machine` for QEMU).
        '';
      };

      credentials = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            file = mkOption {
              type = types.strMatching "/.+";
              example = lib.literalExpression ''config.clan.core.vars.generators.test-vm-secrets.files."api-key".path'';
              description = ''
                Absolute path of the secret on the host, as a string (a Nix
                path literal would copy the secret into the world-readable
                store). It stays root-only: systemd reads it for
                microvm@<name>.service through LoadCredential=. For clan vars
                use `config.clan.core.vars.generators.<g>.files.<f>.path`
                (never a hard-coded /run/secrets path: clan moved them in
                2026).
              '';
            };
            encrypted = mkOption {
              type = types.bool;
              default = false;
              description = "The file was made by `systemd-creds encrypt`; load it with LoadCredentialEncrypted= (systemd decrypts it for the VM's unit).";
            };
          };
        });
        default = { };
        description = ''
          Secrets for the VM. The attribute name is the credential name in
          the guest (`LoadCredential=NAME` there); letters, digits, `_`, `.`
          and `-`, not starting with `vmcred.`.
        '';
      };

      static = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { ENVIRONMENT = "test"; CLUSTER = "britton-desktop"; };
        description = ''
          Non-secret strings, delivered and verified like the credentials
          (for example ENVIRONMENT=test). They are visible in the host's
          process list while `vmcred-host pack` runs: never put a secret here.
        '';
      };

      mode = mkOption {
        type = types.enum [ "verified" "systemd" ];
        default = "verified";
        description = ''
          `verified`: credentials travel under vmcred's own OEM string
          prefix, which systemd ignores; only what the guest agent verified
          reaches services (through /run/credstore). `systemd`: standard
          `io.systemd.credential.binary:` strings, which the guest's PID 1
          imports itself as well (works without the agent, unverified).
          Set the guest's services.vmcred-guest.mode to the same value.
        '';
      };

      signingKeyFile = mkOption {
        type = types.nullOr (types.strMatching "/.+");
        default = null;
        example = lib.literalExpression ''config.clan.core.vars.generators.vmcred-signing.files."signing.key".path'';
        description = ''
          Ed25519 private key (`vmcred-host keygen --out PREFIX`, the
          PREFIX.key file), root-only, as a path string. It reaches the
          hypervisor's unit like a credential (LoadCredential=) and signs the
          manifest, so that the guest agent accepts only what this host
          sent; give the guest the matching PREFIX.pub in
          services.vmcred-guest.trustedKeys.
        '';
      };

      channel = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Run the vsock channel (`vmcred-host serve`): the guest agent
            reports over it (readiness, `waitReady`) and fetches what does
            not go by firmware (cloud-hypervisor, Firecracker, and
            `overflow = "channel"`). Needs `microvm.vsock.cid` in the VM.
          '';
        };
        port = mkOption {
          type = types.ints.between 1024 4294967294;
          default = defaultPort;
          description = ''
            vsock port of the channel. cloud-hypervisor and Firecracker: the
            host listens on `<stateDir>/<name>/notify.vsock_<port>` (per VM).
            QEMU (vhost-vsock): the host's vsock port space is shared by all
            VMs, so each QEMU VM needs its own port (checked).
          '';
        };
        overflow = mkOption {
          type = types.enum [ "fail" "channel" ];
          default = "channel";
          description = ''
            What `vmcred-host pack` does with a credential that does not fit
            the firmware limits (SMBIOS size, fw_cfg name length, the ~4 KiB
            systemd 252-256 read): `fail` refuses to start the VM, naming
            the credential and the limit; `channel` sends it over the channel.
          '';
        };
        cid = mkOption {
          type = types.nullOr types.ints.unsigned;
          default = null;
          description = ''
            The VM's vsock CID; for QEMU the server accepts connections only
            from it. `null`: the VM's `microvm.vsock.cid`.
          '';
        };
      };

      waitReady = mkOption {
        type = types.either types.bool types.ints.positive;
        default = true;
        description = ''
          Add vmcred-ready@<name>.service, a oneshot that starts with the VM
          and becomes active when the guest agent reported every credential
          verified (`vmcred-host wait`); it fails when the agent reports a
          failure or on timeout. `true`: wait up to ${toString defaultWaitSeconds} s;
          a number: that many seconds; `false`: no such unit. Host services
          that need the VM ready: `requires` and `after` it.
        '';
      };

      secretsUnits = mkOption {
        type = types.listOf types.str;
        default = lib.optional ((config'.sops.useSystemdActivation or false) == true) "sops-install-secrets.service";
        defaultText = lib.literalExpression ''lib.optional config.sops.useSystemdActivation "sops-install-secrets.service"'';
        example = [ "sops-install-secrets.service" ];
        description = ''
          Units that put this VM's secret files in place; microvm@<name>
          wants and starts after them, instead of failing (and restarting
          every 5 s) on a missing LoadCredential= source. Secrets that NixOS
          activation writes (clan vars and sops-nix by default) exist before
          any unit starts and need none. Default: sops-nix's unit when
          `sops.useSystemdActivation` is set.
        '';
      };

      setExtraArgsScript = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Set `microvm.extraArgsScript` in the VM's configuration, for VMs
          declared in microvm.vms.<name>.config (through microvm.nix's
          extraModules). For a VM built from a flake or evaluatedConfig,
          which this module cannot extend, check instead that its
          configuration sets it to /etc/vmcred/vms/<name>/extra-args (the
          guest module's services.vmcred-guest.hostVM does), and fail
          evaluation with that fix otherwise. A VM that already has an
          extraArgsScript gets a conflicting-definitions error: set this to
          false and have that script also run `runtimeArgsScript` (or
          /etc/vmcred/vms/<name>/extra-args).
        '';
      };

      runtimeArgsScript = mkOption {
        type = types.package;
        readOnly = true;
        default = (vmInfo name config).script;
        defaultText = lib.literalExpression "<generated>";
        description = "The generated microvm.extraArgsScript (read-only).";
      };

      readyUnit = mkOption {
        type = types.str;
        readOnly = true;
        default = (vmInfo name config).readyUnit;
        defaultText = lib.literalExpression ''"vmcred-ready@<name>.service"'';
        description = "Name of the readiness unit, for `requires`/`after` in host units (read-only).";
      };
    };
  };

  vmAssertions = name: vm:
    let
      i = vmInfo name vm;
      at = "services.vmcred.vms.${name}";
      names = i.credNames ++ i.staticNames;
      files = map (n: vm.credentials.${n}.file) i.credNames ++ lib.optional (vm.signingKeyFile != null) vm.signingKeyFile;
    in
    [
      {
        assertion = validName name;
        message = "${at}: the VM name must match ${nameRe}.";
      }
      {
        assertion = lib.all (n: validName n && !(reservedName n)) names;
        message = "${at}: credential and static names must match ${nameRe} and not start with `vmcred.`; got: ${lib.concatStringsSep ", " names}.";
      }
      {
        assertion = lib.all (n: !(vm.static ? ${n})) i.credNames;
        message = "${at}: a name is both a credential and a static string.";
      }
      {
        assertion = lib.all absolutePath files;
        message = "${at}: credential files and signingKeyFile must be absolute paths outside /nix/store (the store is world-readable).";
      }
      {
        assertion = i.hypervisor != null && builtins.elem i.hypervisor [ "qemu" "qemu-microvm" "cloud-hypervisor" "firecracker" ];
        message = "${at}: cannot tell the hypervisor (${if i.detected == null then "the VM is not in microvm.vms" else i.detected}); set ${at}.hypervisor (qemu, qemu-microvm, cloud-hypervisor or firecracker).";
      }
      {
        assertion = vm.hypervisor == null || i.detected == null || vm.hypervisor == i.detected;
        message = "${at}.hypervisor is ${toString vm.hypervisor} but the VM's microvm.nix configuration says ${toString i.detected}.";
      }
      {
        assertion = i.hybrid -> vm.channel.enable;
        message = "${at}: ${toString i.hypervisor} needs channel.enable: it gets no credentials by firmware here (Firecracker has no SMBIOS; cloud-hypervisor takes OEM strings only on its command line, and microvm.nix already passes the one --platform it accepts).";
      }
      {
        assertion = i.hybrid -> vm.signingKeyFile != null;
        message = "${at}: ${toString i.hypervisor} gets the manifest by channel (pack --manifest-by-channel: microvm.nix's runner owns cloud-hypervisor's one --platform, and Firecracker has no firmware), so the guest can verify it only by its signature: set ${at}.signingKeyFile and give the guest the public key in services.vmcred-guest.trustedKeys.";
      }
      {
        assertion = vm.channel.overflow == "channel" -> vm.channel.enable;
        message = "${at}: channel.overflow = \"channel\" needs channel.enable.";
      }
      {
        assertion = i.waitSeconds != null -> vm.channel.enable;
        message = "${at}: waitReady needs channel.enable (the guest agent reports over the channel).";
      }
      {
        assertion = (vm.channel.enable && !i.hybrid) -> i.cid != null;
        message = "${at}: set microvm.vsock.cid in the VM (or ${at}.channel.cid): the channel server accepts only that CID.";
      }
    ];

  # Signing keys named by more than one VM.
  signingKeys = lib.filter (k: k != null) (lib.mapAttrsToList (_: vm: vm.signingKeyFile) cfg.vms);

  # A VM whose configuration this module cannot extend (flake,
  # evaluatedConfig) must point microvm.extraArgsScript at the installed
  # script itself.
  externalWiringAssertions = name: vm:
    let
      g = guestOf name;
      at = "services.vmcred.vms.${name}";
      from = if config.microvm.vms.${name}.flake != null then "the flake's nixosConfigurations.${name}" else "microvm.vms.${name}.evaluatedConfig";
    in
    lib.optionals (inMicrovmVms name && !(declarative name) && vm.setExtraArgsScript) [
      {
        assertion = (g.microvm.extraArgsScript or null) == etcArgsScript name;
        message = "${at}: VM ${name} is built from ${from}, which this module cannot extend, and its microvm.extraArgsScript is ${builtins.toJSON (g.microvm.extraArgsScript or null)}, so vmcred would not reach it. Fix: in that configuration, import vmcred's guest module (inputs.vmcred.nixosModules.guest) and set services.vmcred-guest.hostVM = \"${name}\" (it sets microvm.extraArgsScript = \"${etcArgsScript name}\", installed by this host); or set ${at}.setExtraArgsScript = false if you wire it yourself.";
      }
    ]
    # Its agent must dial the channel this host serves (hybrid vsock: no
    # manifest by firmware names it).
    ++ lib.optionals (inMicrovmVms name && !(declarative name) && (vmInfo name vm).hybrid && vm.channel.enable
      && (g.services.vmcred-guest.enable or false)) [
      {
        assertion = g.services.vmcred-guest.channel == (vmInfo name vm).channelAddress;
        message = "${at}: the agent in VM ${name} (${from}) dials ${builtins.toJSON g.services.vmcred-guest.channel}, but this host serves its channel for it at ${(vmInfo name vm).channelAddress}: set services.vmcred-guest.channel = \"${(vmInfo name vm).channelAddress}\" there.";
      }
    ];

  # QEMU VMs share the host's vsock port space.
  nativePorts = lib.mapAttrsToList (name: vm: vm.channel.port)
    (lib.filterAttrs (name: vm: vm.channel.enable && !((vmInfo name vm).hybrid)) cfg.vms);

  # Added to the VM's own configuration (microvm.vms.<name>.config).
  guestModule = name: vm:
    let
      i = vmInfo name vm;
    in
    { config, ... }: {
      _file = moduleFile;
      # The guest module, unconditionally: its options must not depend on
      # `options` (that is what made NixOS recurse). Its key makes a second
      # import (the user's own, by another path) a no-op.
      imports = [ ./guest.nix ];
      config = {
        microvm.extraArgsScript = "${i.script}";
        assertions = [
          {
            # (cloud-hypervisor: or a --vsock of the user's in its extraArgs)
            assertion = vm.channel.enable -> (config.microvm.vsock.cid != null
              || (i.hypervisor == "cloud-hypervisor" && lib.any (a: a == "--vsock" || lib.hasPrefix "--vsock=" a) (config.microvm.cloud-hypervisor.extraArgs or [ ])));
            message = "services.vmcred.vms.${name}: the channel needs a vsock device in the VM: set microvm.vsock.cid.";
          }
          {
            assertion = (i.hybrid && config.services.vmcred-guest.enable) -> config.services.vmcred-guest.trustedKeys != [ ];
            message = "services.vmcred.vms.${name}: the manifest reaches this ${toString i.hypervisor} VM by channel, so the guest agent must check its signature: set services.vmcred-guest.trustedKeys in the VM to the public key of services.vmcred.vms.${name}.signingKeyFile.";
          }
          {
            assertion = vm.mode == "verified" -> config.services.vmcred-guest.enable;
            message = "services.vmcred.vms.${name}: mode \"verified\" needs the vmcred guest agent in the VM: set services.vmcred-guest.enable = true there, or no service will see the credentials.";
          }
        ];
        # Keep the guest agent consistent with this side.
        services.vmcred-guest = {
          mode = lib.mkDefault vm.mode;
          channel = lib.mkIf (vm.channel.enable && i.hybrid) (lib.mkDefault i.channelAddress);
        };
      };
    };
in
{
  _file = moduleFile;

  # Adds the guest wiring to the VMs declared in microvm.vms.<name>.config
  # that services.vmcred.vms names, through microvm.nix's extraModules
  # (which it applies to `config` VMs only). Declaring the option again
  # extends each entry's submodule; it adds no entry: a VM that only
  # services.vmcred.vms names (imperative, `microvm -c`) stays unknown to
  # microvm.nix.
  options.microvm.vms = mkOption {
    type = types.attrsOf (types.submodule ({ name, ... }: {
      config.extraModules = mkIf (cfg.vms ? ${name} && cfg.vms.${name}.setExtraArgsScript) [ (guestModule name cfg.vms.${name}) ];
    }));
  };

  options.services.vmcred = {
    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage <vmcred/nixos-modules/package.nix> { }";
      description = "The vmcred package (`bin/vmcred-host`).";
    };

    vms = mkOption {
      type = types.attrsOf (types.submodule vmModule);
      default = { };
      description = ''
        microvm.nix VMs that get credentials through vmcred; the attribute
        name is the VM's name in `microvm.vms`.
      '';
    };
  };

  config = mkIf (cfg.vms != { }) (lib.mkMerge [
    {
      assertions =
        [
          {
            assertion = hasMicrovm;
            message = "services.vmcred.vms is set but microvm.nix's host module is not imported (inputs.microvm.nixosModules.host).";
          }
          {
            assertion = lib.unique nativePorts == nativePorts;
            message = "services.vmcred.vms: QEMU VMs share the host's vsock port space; give each a different channel.port (now: ${lib.concatMapStringsSep ", " toString nativePorts}).";
          }
        ]
        ++ lib.concatLists (lib.mapAttrsToList vmAssertions cfg.vms)
        ++ lib.optionals hasMicrovm (lib.concatLists (lib.mapAttrsToList externalWiringAssertions cfg.vms))
        ++ [
          {
            assertion = lib.unique signingKeys == signingKeys;
            message = "services.vmcred.vms: VMs share a signingKeyFile. Every VM's hypervisor (microvm@<name>, user microvm) gets its key, so a shared key lets one VM's hypervisor sign manifests every other VM accepts: give each VM its own key (vmcred-host keygen, or a clan vars generator per VM).";
          }
        ];

      # The args script of every VM at a fixed path, for VMs whose
      # configuration is built elsewhere (etcArgsScript).
      environment.etc = lib.mapAttrs' (name: vm: lib.nameValuePair
        (lib.removePrefix "/etc/" (etcArgsScript name))
        { source = (vmInfo name vm).script; })
        cfg.vms;

      # QEMU's vhost-vsock needs vhost_vsock, which a freshly booted host
      # loads only when something opens /dev/vhost-vsock.
      boot.kernelModules = lib.mkIf (lib.any (n: let i = vmInfo n cfg.vms.${n}; in cfg.vms.${n}.channel.enable && !i.hybrid) (builtins.attrNames cfg.vms)) [ "vhost_vsock" ];

      # vmcred-host check / keygen / wait for the administrator.
      environment.systemPackages = [ cfg.package ];

      systemd.services = lib.mkMerge (lib.mapAttrsToList
        (name: vm:
          let
            i = vmInfo name vm;
          in
          {
            "microvm@${name}" = {
              overrideStrategy = "asDropin";
              # As microvm.nix's own drop-in: no PATH= line (an imperative VM
              # gets only this drop-in).
              path = lib.mkForce [ ];
              # The units that put the secrets in place: LoadCredential= fails
              # the unit (and Restart=always loops) while a source is missing.
              wants = vm.secretsUnits;
              after = vm.secretsUnits;
              serviceConfig = {
                LoadCredential = i.loadCredentials;
                LoadCredentialEncrypted = i.loadCredentialsEncrypted;
                RuntimeDirectory = [ "vmcred-${name}" ];
                RuntimeDirectoryMode = "0700";
              };
            };
          }
          // lib.optionalAttrs (i.waitSeconds != null) {
            "vmcred-ready@${name}" = {
              description = "vmcred: wait until VM ${name} has verified its credentials";
              documentation = [ "https://github.com/vmcred/vmcred" ];
              wantedBy = [ "microvm@${name}.service" ];
              bindsTo = [ "microvm@${name}.service" ];
              after = [ "microvm@${name}.service" ];
              serviceConfig = {
                Type = "oneshot";
                RemainAfterExit = true;
                ExecStart = "${vmcredHost} wait --vm ${name} --status-dir ${i.runtimeDir} --timeout ${toString i.waitSeconds}s";
                TimeoutStartSec = "${toString (i.waitSeconds + 30)}s";
                # Reads the status file in the VM's runtime folder (0700, owned
                # by the hypervisor's user); needs nothing else.
                User = "microvm";
                Group = "kvm";
                CapabilityBoundingSet = "";
                NoNewPrivileges = true;
                PrivateNetwork = true;
                RestrictAddressFamilies = [ "AF_UNIX" ];
                ProtectSystem = "strict";
                ProtectHome = true;
                PrivateTmp = true;
                PrivateDevices = true;
                ProtectKernelTunables = true;
                ProtectKernelModules = true;
                ProtectControlGroups = true;
                RestrictNamespaces = true;
                LockPersonality = true;
                MemoryDenyWriteExecute = true;
                SystemCallArchitectures = "native";
                SystemCallFilter = [ "@system-service" ];
              };
            };
          })
        cfg.vms);
    }

  ]);
}
