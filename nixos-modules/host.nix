# vmcred host module: hands secrets to microvm.nix VMs as verified systemd
# credentials.
#
# For every services.vmcred.vms.<name>:
#  - vmcred-push@<name>.service (oneshot, started with microvm@<name>) dials
#    the VM's guest agent on its privileged vsock port (QEMU: AF_VSOCK to
#    the VM's CID; cloud-hypervisor and Firecracker: the VM's hybrid-vsock
#    Unix socket, `CONNECT <port>`) and runs one signed session
#    (`vmcred-host push`): the guest gets every credential, verifies it and
#    reports on the same connection. Only guest root can listen on that
#    port, so the host knows who answers (DESIGN §8). The push unit reads
#    the secret files through its own LoadCredential= (they stay root:root
#    0400, clan vars and sops defaults; no `group = "kvm"`, which would let
#    every VM read every VM's secrets) and records the report in
#    /run/vmcred-<name>.
#  - vmcred-push@<name>.path (pushOnChange) starts that push again when a
#    source file changes: rotation without reboot; the guest agent restarts
#    the services that use a changed credential (credentials.<c>.policy).
#  - QEMU VMs also get their credentials by firmware (SMBIOS or fw_cfg), so
#    they are there before vsock is up: microvm@<name> gets a drop-in with
#    the same LoadCredential= lines and RuntimeDirectory=vmcred-<name>
#    (0700, deleted when the VM stops), and the VM's
#    microvm.extraArgsScript runs `vmcred-host pack` (files in that folder,
#    never a secret in argv). VMs declared in microvm.vms.<name>.config get
#    it (and the guest module) through microvm.nix's extraModules; every
#    QEMU VM's script is also at /etc/vmcred/vms/<name>/extra-args, for VMs
#    built from a flake or by `microvm -c` (guest.nix:
#    services.vmcred-guest.hostVM). This module adds no microvm.vms entry.
#  - vmcred-ready@<name>.service (oneshot, `vmcred-host wait`) becomes
#    active once the push recorded that the guest verified every
#    credential; other host units order after it.
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

  # The guest agent's privileged vsock port (vmcred-guest agent's default;
  # only guest root can bind a port up to 1023).
  defaultAgentPort = 730;
  defaultWaitSeconds = 120;
  # Hypervisors whose vsock is a Unix socket on the host (hybrid vsock:
  # the host connects to it and sends `CONNECT <port>`).
  hybridVsock = h: builtins.elem h [ "cloud-hypervisor" "firecracker" ];
  # microvm.nix runs every hypervisor as this user and group.
  microvmUser = "microvm";
  # The sandbox the push and ready units share (each adds its own
  # ProtectSystem=, address families and user).
  hostUnitSandbox = {
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
  microvmGroup = "kvm";

  # One ExecStart= argument: plain words as they are, anything else in
  # double quotes with systemd's escapes (%, $ and backslash included).
  execArg = a:
    if builtins.match "[A-Za-z0-9_./:=@+,-]+" a != null then a
    else "\"" + lib.replaceStrings [ "\\" "\"" "%" "$" "\n" ] [ "\\\\" "\\\"" "%%" "$$" "\\n" ] a + "\"";

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
    # QEMU gets the credentials by firmware too (pack in the args script);
    # cloud-hypervisor and Firecracker only in the session: microvm.nix's
    # runner owns cloud-hypervisor's one --platform, and Firecracker has no
    # firmware carrier.
    firmware = !hybrid;

    runtimeDir = "/run/vmcred-${name}";
    credNames = builtins.attrNames vm.credentials;
    staticNames = builtins.attrNames vm.static;

    cid =
      if vm.channel.cid != null then vm.channel.cid
      else if guest != null then guest.microvm.vsock.cid
      else null;
    port = vm.channel.port;
    # cloud-hypervisor's socket (the user's --vsock …,socket= honoured),
    # Firecracker's uds_path (microvm.nix: notify.vsock in the VM's folder).
    vsockSocket = if hypervisor == "cloud-hypervisor" && guest != null then chVsockSocket name guest else "${stateDir}/${name}/notify.vsock";
    # Where push dials the guest agent.
    connectAddress =
      if hybrid then "hybrid:${vsockSocket}:${toString port}"
      else "vsock:${if cid == null then "?" else toString cid}:${toString port}";

    notifyPort = vm.channel.notifyPort;
    serveArgs =
      [ "serve" "--vm" name "--listen" "vsock:any:${toString notifyPort}" ]
      ++ lib.optionals (cid != null) [ "--expect-cid" (toString cid) ];

    waitSeconds =
      if vm.waitReady == true then defaultWaitSeconds
      else if vm.waitReady == false then null
      else vm.waitReady;
    pushSeconds = if waitSeconds == null then defaultWaitSeconds else waitSeconds;
    readyUnit = "vmcred-ready@${name}.service";
    pushUnit = "vmcred-push@${name}.service";

    sourceArgs =
      lib.optional (credNames != [ ]) "--from-credentials-directory=${lib.concatStringsSep "," credNames}"
      ++ lib.concatMap (n: [ "--static" "${n}=${vm.static.${n}}" ]) staticNames;

    packArgs =
      [ "pack" "--vm" name "--hypervisor" hypervisor ]
      ++ sourceArgs
      ++ [ "--mode" vm.mode "--runtime-dir" runtimeDir "--overflow" vm.channel.overflow ]
      ++ lib.optionals (notifyPort != null) [ "--notify-socket" "vsock-stream:2:${toString notifyPort}" ];

    # The session: every credential, signed for this VM and the agent's
    # challenge. %d is the unit's $CREDENTIALS_DIRECTORY.
    # (--sign-key %d/… goes between the two: a specifier, not escaped.)
    pushHead = [ "push" "--vm" name "--connect" connectAddress ];
    pushArgs =
      sourceArgs
      ++ lib.concatMap (n: [ "--policy" "${n}=${vm.credentials.${n}.policy}" ])
        (lib.filter (n: vm.credentials.${n}.policy != "restart") credNames)
      ++ [ "--status-dir" runtimeDir "--timeout" "${toString pushSeconds}s" ];
    # push's --state-dir (the generation last pushed, names, sizes and keyed
    # HMACs; no values) defaults to STATUS-DIR/pushed, here
    # /run/vmcred-<name>/pushed: kept while the VM runs, gone when it stops.
    # That is enough: a new boot's agent starts at generation 0, and push
    # always signs above the generation the agent's challenge reports.

    # The files push watches for pushOnChange: exactly the credentials'
    # sources (not the signing key: a new key needs the guest's trust too).
    sourceFiles = map (n: vm.credentials.${n}.file) credNames;

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
      : "''${CREDENTIALS_DIRECTORY:?vmcred: no \$CREDENTIALS_DIRECTORY: is the vmcred drop-in on microvm@${name}.service active?}"
      rd=${lib.escapeShellArg runtimeDir}
      ${lib.escapeShellArg vmcredHost} ${lib.escapeShellArgs packArgs} --sign-key "$CREDENTIALS_DIRECTORY/${signingKeyId}" --print0 >"$rd/hypervisor-args"
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
      ${lib.optionalString (notifyPort != null) ''
        # Guest PID 1's own vmm.notify_socket messages (boot progress, for
        # the journal; readiness comes only from ${pushUnit}). A child of
        # the runner, like microvm.nix's socat notify bridge: it stops with
        # the VM. NOTIFY_SOCKET is dropped: microvm.nix alone decides when
        # microvm@${name} is ready.
        (unset NOTIFY_SOCKET; exec ${lib.escapeShellArg vmcredHost} ${lib.escapeShellArgs serveArgs}) </dev/null >&2 &
      ''}
      # Payload files the hypervisor reads at its start (SMBIOS and fw_cfg
      # files): deleted once ${pushUnit} recorded the guest's report, long
      # after the hypervisor read them; the rest go with the runtime folder
      # when the VM stops.
      payload=()
      for a in "''${args[@]}"; do
        if [[ $a =~ (path|file)=($rd/[^,]+) ]]; then payload+=("''${BASH_REMATCH[2]}"); fi
      done
      if ((''${#payload[@]})); then
        (
          while [[ ! -e "$rd/${name}.json" ]]; do ${sleep} 1; done
          ${rm} -f -- "''${payload[@]}"
        ) </dev/null >/dev/null 2>&1 &
      fi
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
              description = "The file was made by `systemd-creds encrypt`; load it with LoadCredentialEncrypted= (systemd decrypts it for the units that read it).";
            };
            policy = mkOption {
              type = types.enum [ "restart" "reload" "none" ];
              default = "restart";
              description = ''
                What the guest agent does, when a push changes this
                credential in a running VM, with the active units that load
                it (LoadCredential=, LoadCredentialEncrypted=,
                ImportCredential=): restart them, reload them, or nothing
                (`vmcred-host push --policy NAME=…`; signed into the
                manifest).
              '';
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
          Required. Ed25519 private key (`vmcred-host keygen --out PREFIX`,
          the PREFIX.key file), root-only, as a path string. It reaches the
          push unit (and, for QEMU, the hypervisor's unit) like a credential
          (LoadCredential=) and signs each session's manifest for this VM
          and the agent's challenge; the guest agent accepts nothing else.
          Give the guest the matching PREFIX.pub in
          services.vmcred-guest.trustedKeys. One key per VM.
        '';
      };

      channel = {
        port = mkOption {
          # Checked by an assertion (1-1023) that says why.
          type = types.ints.unsigned;
          default = defaultAgentPort;
          description = ''
            The guest agent's vsock port (`vmcred-guest agent --listen
            vsock::PORT`; the guest module's services.vmcred-guest.port,
            set to this for VMs declared here). Privileged (1-1023): only
            guest root can listen there, which is what lets the host trust
            whoever answers. Pick a port nothing else in the guest uses
            (systemd ≥ 256's ssh generator takes 22).
          '';
        };
        overflow = mkOption {
          type = types.enum [ "fail" "channel" ];
          default = "channel";
          description = ''
            QEMU: what `vmcred-host pack` does with a credential that does
            not fit the firmware limits (SMBIOS size, fw_cfg name length,
            the ~4 KiB systemd 252-256 read): `fail` refuses to start the
            VM, naming the credential and the limit; `channel` leaves it to
            the push session.
          '';
        };
        cid = mkOption {
          type = types.nullOr types.ints.unsigned;
          default = null;
          description = ''
            The VM's vsock CID, which push dials for QEMU (vhost-vsock).
            `null`: the VM's `microvm.vsock.cid`.
          '';
        };
        notifyPort = mkOption {
          type = types.nullOr (types.ints.between 1024 4294967294);
          default = null;
          example = 8889;
          description = ''
            QEMU only: receive the guest PID 1's own `vmm.notify_socket`
            messages (its boot progress, logged in microvm@<name>'s
            journal) with `vmcred-host serve` on this host vsock port
            (`pack --notify-socket`). Optional: readiness comes from the
            push session alone. QEMU VMs share the host's vsock port space:
            each needs its own (checked). (microvm.nix already bridges
            cloud-hypervisor's to microvm@<name>; Firecracker has no
            firmware to carry it.)
          '';
        };
      };

      pushOnChange = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Rotation without reboot: a path unit (vmcred-push@<name>.path,
          active while the VM runs) watches the credentials' source files
          (e.g. the clan vars paths) and starts vmcred-push@<name>.service
          again when one changes; the guest swaps its credstore all or
          nothing and restarts (or reloads, per credentials.<c>.policy) the
          services that use a changed credential.
        '';
      };

      waitReady = mkOption {
        type = types.either types.bool types.ints.positive;
        default = true;
        description = ''
          Add vmcred-ready@<name>.service, a oneshot that starts with the VM
          and becomes active when the push session recorded that the guest
          agent verified every credential (`vmcred-host wait`); it fails
          when the agent reports a failure or on timeout. `true`: wait up
          to ${toString defaultWaitSeconds} s; a number: that many seconds (also the push's
          `--timeout`); `false`: no such unit. Host services that need the
          VM ready: `requires` and `after` it.
        '';
      };

      secretsUnits = mkOption {
        type = types.listOf types.str;
        default = lib.optional ((config'.sops.useSystemdActivation or false) == true) "sops-install-secrets.service";
        defaultText = lib.literalExpression ''lib.optional config.sops.useSystemdActivation "sops-install-secrets.service"'';
        example = [ "sops-install-secrets.service" ];
        description = ''
          Units that put this VM's secret files in place;
          vmcred-push@<name> (and, for QEMU, microvm@<name>) want and start
          after them, instead of failing on a missing LoadCredential=
          source. Secrets that NixOS
          activation writes (clan vars and sops-nix by default) exist before
          any unit starts and need none. Default: sops-nix's unit when
          `sops.useSystemdActivation` is set.
        '';
      };

      setExtraArgsScript = mkOption {
        type = types.bool;
        default = true;
        description = ''
          QEMU: set `microvm.extraArgsScript` in the VM's configuration,
          for VMs declared in microvm.vms.<name>.config (through
          microvm.nix's extraModules, which also import the guest module).
          For a VM built from a flake or evaluatedConfig, which this module
          cannot extend, check instead that its configuration sets it to
          /etc/vmcred/vms/<name>/extra-args (the guest module's
          services.vmcred-guest.hostVM does), and fail evaluation with that
          fix otherwise. A VM that already has an extraArgsScript gets a
          conflicting-definitions error: set this to false and have that
          script also run `runtimeArgsScript` (or
          /etc/vmcred/vms/<name>/extra-args). cloud-hypervisor and
          Firecracker VMs get no script (nothing goes by firmware); `false`
          there only stops the guest module's import.
        '';
      };

      runtimeArgsScript = mkOption {
        type = types.nullOr types.package;
        readOnly = true;
        default = let i = vmInfo name config; in if i.firmware then i.script else null;
        defaultText = lib.literalExpression "<generated>";
        description = "The generated microvm.extraArgsScript of a QEMU VM; null for cloud-hypervisor and Firecracker (read-only).";
      };

      pushUnit = mkOption {
        type = types.str;
        readOnly = true;
        default = (vmInfo name config).pushUnit;
        defaultText = lib.literalExpression ''"vmcred-push@<name>.service"'';
        description = "Name of the push unit; `systemctl start` it to push the current sources now (read-only).";
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
        assertion = vm.signingKeyFile != null;
        message = "${at}: set ${at}.signingKeyFile (the VM's own key from `vmcred-host keygen --out PREFIX`, PREFIX.key, or a clan vars generator) and give the guest PREFIX.pub in services.vmcred-guest.trustedKeys: the guest agent accepts only a session signed for it by a key it trusts.";
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
        assertion = i.hybrid || i.cid != null;
        message = "${at}: set microvm.vsock.cid in the VM (or ${at}.channel.cid): push dials the guest agent at that CID.";
      }
      {
        assertion = vm.channel.port >= 1 && vm.channel.port <= 1023;
        message = "${at}.channel.port = ${toString vm.channel.port}: the guest agent's port must be privileged (1-1023; default ${toString defaultAgentPort}): only guest root can listen there, which is what lets the host trust whoever answers, and the agent refuses any other.";
      }
      {
        assertion = vm.channel.notifyPort != null -> !i.hybrid;
        message = "${at}: channel.notifyPort is for QEMU VMs (microvm.nix already bridges cloud-hypervisor's vmm.notify_socket to microvm@${name}; Firecracker has no firmware to carry it): unset it.";
      }
    ];

  # Signing keys named by more than one VM.
  signingKeys = lib.filter (k: k != null) (lib.mapAttrsToList (_: vm: vm.signingKeyFile) cfg.vms);

  # A VM whose configuration this module cannot extend (flake,
  # evaluatedConfig) must wire itself: its agent's VM name and port must be
  # the ones push uses, and a QEMU VM must point microvm.extraArgsScript at
  # the installed script.
  externalWiringAssertions = name: vm:
    let
      g = guestOf name;
      i = vmInfo name vm;
      at = "services.vmcred.vms.${name}";
      from = if config.microvm.vms.${name}.flake != null then "the flake's nixosConfigurations.${name}" else "microvm.vms.${name}.evaluatedConfig";
      external = inMicrovmVms name && !(declarative name);
      agent = external && (g.services.vmcred-guest.enable or false);
    in
    lib.optionals (external && vm.setExtraArgsScript && i.firmware) [
      {
        assertion = (g.microvm.extraArgsScript or null) == etcArgsScript name;
        message = "${at}: VM ${name} is built from ${from}, which this module cannot extend, and its microvm.extraArgsScript is ${builtins.toJSON (g.microvm.extraArgsScript or null)}, so vmcred's firmware credentials would not reach it. Fix: in that configuration, import vmcred's guest module (inputs.vmcred.nixosModules.guest) and set services.vmcred-guest.hostVM = \"${name}\" (it sets microvm.extraArgsScript = \"${etcArgsScript name}\", installed by this host); or set ${at}.setExtraArgsScript = false if you wire it yourself.";
      }
    ]
    ++ lib.optionals external [
      {
        assertion = g.services.vmcred-guest.enable or false;
        message = "${at}: VM ${name} (${from}) does not run the vmcred guest agent, so nothing answers the push: import vmcred's guest module there (inputs.vmcred.nixosModules.guest) and set services.vmcred-guest = { enable = true; hostVM = \"${name}\"; trustedKeys = [ <the public key of ${at}.signingKeyFile> ]; }.";
      }
    ]
    ++ lib.optionals agent [
      {
        assertion = g.services.vmcred-guest.vmName == name;
        message = "${at}: the agent in VM ${name} (${from}) takes its VM name to be ${builtins.toJSON g.services.vmcred-guest.vmName}, but this host signs its sessions for \"${name}\", so it would refuse them: set services.vmcred-guest.hostVM = \"${name}\" (or vmName) there.";
      }
      {
        assertion = g.services.vmcred-guest.port == vm.channel.port;
        message = "${at}: the agent in VM ${name} (${from}) listens on vsock port ${toString g.services.vmcred-guest.port}, but push dials ${toString vm.channel.port}: set services.vmcred-guest.port = ${toString vm.channel.port} there (or ${at}.channel.port).";
      }
    ];

  # QEMU VMs share the host's vsock port space (serve's notify ports).
  notifyPorts = lib.filter (p: p != null) (lib.mapAttrsToList (_: vm: vm.channel.notifyPort) cfg.vms);

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
        microvm.extraArgsScript = mkIf i.firmware "${i.script}";
        assertions = [
          {
            # (cloud-hypervisor: or a --vsock of the user's in its extraArgs)
            assertion = config.microvm.vsock.cid != null
              || (i.hypervisor == "cloud-hypervisor" && lib.any (a: a == "--vsock" || lib.hasPrefix "--vsock=" a) (config.microvm.cloud-hypervisor.extraArgs or [ ]));
            message = "services.vmcred.vms.${name}: push reaches the guest agent over vsock: set microvm.vsock.cid in the VM.";
          }
          {
            assertion = config.services.vmcred-guest.enable;
            message = "services.vmcred.vms.${name}: the push needs the vmcred guest agent in the VM to answer: set services.vmcred-guest.enable = true there (with trustedKeys = [ <the public key of services.vmcred.vms.${name}.signingKeyFile> ]).";
          }
          {
            assertion = config.services.vmcred-guest.vmName == name;
            message = "services.vmcred.vms.${name}: the VM's services.vmcred-guest.vmName is ${builtins.toJSON config.services.vmcred-guest.vmName}, but the host signs its sessions for \"${name}\", so the agent would refuse them: leave vmName unset (it defaults to the VM's name here).";
          }
        ];
        # Keep the guest agent consistent with this side.
        services.vmcred-guest = {
          mode = lib.mkDefault vm.mode;
          vmName = lib.mkDefault name;
          port = vm.channel.port;
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
            assertion = lib.unique notifyPorts == notifyPorts;
            message = "services.vmcred.vms: QEMU VMs share the host's vsock port space; give each a different channel.notifyPort (now: ${lib.concatMapStringsSep ", " toString notifyPorts}).";
          }
        ]
        ++ lib.concatLists (lib.mapAttrsToList vmAssertions cfg.vms)
        ++ lib.optionals hasMicrovm (lib.concatLists (lib.mapAttrsToList externalWiringAssertions cfg.vms))
        ++ [
          {
            assertion = lib.unique signingKeys == signingKeys;
            message = "services.vmcred.vms: VMs share a signingKeyFile. Every VM's push unit (and a QEMU VM's hypervisor) runs as user microvm and gets its key, so a shared key lets one VM's hypervisor sign sessions every other VM accepts: give each VM its own key (vmcred-host keygen, or a clan vars generator per VM).";
          }
        ];

      # The args script of every QEMU VM at a fixed path, for VMs whose
      # configuration is built elsewhere (etcArgsScript).
      environment.etc = lib.mapAttrs' (name: vm: lib.nameValuePair
        (lib.removePrefix "/etc/" (etcArgsScript name))
        { source = (vmInfo name vm).script; })
        (lib.filterAttrs (name: vm: (vmInfo name vm).firmware) cfg.vms);

      # QEMU's vhost-vsock needs vhost_vsock, which a freshly booted host
      # loads only when something opens /dev/vhost-vsock; push dials
      # AF_VSOCK (and serve listens) through it.
      boot.kernelModules = lib.mkIf (lib.any (n: !(vmInfo n cfg.vms.${n}).hybrid) (builtins.attrNames cfg.vms)) [ "vhost_vsock" ];

      # vmcred-host check / keygen / push / wait for the administrator.
      environment.systemPackages = [ cfg.package ];

      systemd.paths = lib.mkMerge (lib.mapAttrsToList
        (name: vm:
          let
            i = vmInfo name vm;
          in
          lib.optionalAttrs (vm.pushOnChange && i.sourceFiles != [ ]) {
            # Watches while the VM runs (wanted by and bound to it), so a
            # changed secret never starts a stopped VM. A change while a
            # push runs merges into that push's start job (it may have
            # read the old file): the next change, or `systemctl start
            # ${i.pushUnit}`, sends it.
            "vmcred-push@${name}" = {
              description = "vmcred: push VM ${name}'s credentials again when a source file changes";
              documentation = [ "https://github.com/vmcred/vmcred" ];
              wantedBy = [ "microvm@${name}.service" ];
              bindsTo = [ "microvm@${name}.service" ];
              pathConfig = {
                PathChanged = map unitPath i.sourceFiles;
                Unit = i.pushUnit;
              };
            };
          })
        cfg.vms);

      systemd.services = lib.mkMerge (lib.mapAttrsToList
        (name: vm:
          let
            i = vmInfo name vm;
          in
          lib.optionalAttrs i.firmware {
            # QEMU: pack (in the args script) reads the credentials and the
            # signing key from the hypervisor's unit, for the firmware.
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
          // lib.optionalAttrs (!i.firmware) {
            # cloud-hypervisor, Firecracker: the hypervisor gets no secret;
            # the folder holds the push's report only.
            "microvm@${name}" = {
              overrideStrategy = "asDropin";
              path = lib.mkForce [ ];
              serviceConfig = {
                RuntimeDirectory = [ "vmcred-${name}" ];
                RuntimeDirectoryMode = "0700";
              };
            };
          }
          // {
            "vmcred-push@${name}" = {
              description = "vmcred: push VM ${name}'s credentials to its guest agent";
              documentation = [ "https://github.com/vmcred/vmcred" ];
              # Started with the VM (and again by vmcred-push@${name}.path);
              # stopped and restarted with it. No After=microvm@${name}: with
              # microvm.host.useNotifySockets that unit is active only once
              # the guest has booted, and the guest's boot waits for this
              # push (its agent sends READY=1 when the credstore is
              # complete). push retries with backoff while the VM boots.
              # No Requires=/BindsTo=: a push never starts a stopped VM.
              wantedBy = [ "microvm@${name}.service" ];
              partOf = [ "microvm@${name}.service" ];
              wants = vm.secretsUnits;
              after = vm.secretsUnits;
              # A running session is not cut by a switch.
              restartIfChanged = false;
              serviceConfig = {
                Type = "oneshot";
                # %d: this unit's $CREDENTIALS_DIRECTORY (a specifier, so
                # not escaped like the other arguments).
                ExecStart = "${vmcredHost} ${lib.concatMapStringsSep " " execArg i.pushHead} --sign-key %d/${signingKeyId} ${lib.concatMapStringsSep " " execArg i.pushArgs}";
                TimeoutStartSec = "${toString (i.pushSeconds + 30)}s";
                LoadCredential = i.loadCredentials;
                LoadCredentialEncrypted = i.loadCredentialsEncrypted;
                # The hypervisor's user: it owns the VM's hybrid-vsock socket
                # and /run/vmcred-${name}, where the report goes (0600).
                User = microvmUser;
                Group = microvmGroup;
                UMask = "0077";
                CapabilityBoundingSet = "";
                NoNewPrivileges = true;
                RestrictAddressFamilies = [ "AF_UNIX" "AF_VSOCK" ];
                # ProtectSystem=full, not strict: /run/vmcred-${name} may
                # appear after this unit's namespace is set up (no ordering
                # against microvm@${name}), and must be writable then; file
                # permissions keep the rest of /run out of reach.
                ProtectSystem = "full";
              } // hostUnitSandbox;
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
                # Reads the report ${i.pushUnit} records in the VM's runtime
                # folder (0700, owned by the hypervisor's user, removed when
                # the VM stops: no report from an earlier boot); needs
                # nothing else.
                User = microvmUser;
                Group = microvmGroup;
                CapabilityBoundingSet = "";
                NoNewPrivileges = true;
                PrivateNetwork = true;
                RestrictAddressFamilies = [ "AF_UNIX" ];
                ProtectSystem = "strict";
              } // hostUnitSandbox;
            };
          })
        cfg.vms);
    }

  ]);
}
