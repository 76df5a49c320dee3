# The NixOS module the vmcred clan service's `host` role adds to the machine
# that runs the VM, for one instance (one VM). See default.nix.
{ vlib, settings, instanceName }:

{ config, lib, options, ... }:

let
  vm = if settings.vmName != null then settings.vmName else instanceName;
  at = "vmcred instance ${instanceName} (VM ${vm})";

  gens = config.clan.core.vars.generators;
  secretsGen = vlib.secretsGenerator vm;
  signingGen = vlib.signingGenerator vm;

  creds = settings.credentials;
  kindsOf = c: lib.filter (k: c.${k} != null) [ "generate" "prompt" "var" ];
  # Credentials whose value this instance makes (generate or prompt), in its
  # own generator; the others name an existing clan var.
  own = lib.filterAttrs (_: c: c.var == null) creds;
  fromVars = lib.filterAttrs (_: c: c.var != null) creds;
  generated = lib.filterAttrs (_: c: c.generate != null && c.generate.script == null) own;
  prompted = lib.filterAttrs (_: c: c.prompt != null && c.generate == null) own;

  parsedOEM = map (s: { raw = s; parsed = vlib.parseOEMString s; }) settings.staticOEMStrings;
  badOEM = map (x: x.raw) (lib.filter (x: x.parsed == null) parsedOEM);
  static = settings.static // lib.listToAttrs (map (x: x.parsed) (lib.filter (x: x.parsed != null) parsedOEM));

  # microvm.nix runs every hypervisor as user microvm, group kvm.
  hypervisorUser = {
    user = "microvm";
    groups = lib.unique ([ "kvm" "microvm" ]
      ++ lib.optional ((config.users.users.microvm.group or null) != null) config.users.users.microvm.group
      ++ (config.users.users.microvm.extraGroups or [ ]));
  };

  # Every secret file microvm@<vm> loads, with where it comes from.
  loadedFiles =
    lib.mapAttrsToList (n: c: { what = "credential ${n} (${secretsGen}/${c.fileName})"; file = gens.${secretsGen}.files.${c.fileName}; }) own
    ++ lib.mapAttrsToList (n: c: { what = "credential ${n} (${c.var.generator}/${c.var.file})"; file = gens.${c.var.generator}.files.${c.var.file}; })
      (lib.filterAttrs (_: c: gens ? ${c.var.generator} && gens.${c.var.generator}.files ? ${c.var.file}) fromVars)
    ++ [{ what = "the signing key (${signingGen}/${vlib.signingKeyFile})"; file = gens.${signingGen}.files.${vlib.signingKeyFile}; }];

  # A var that does not exist gets a path that cannot: the assertion below
  # names the mistake (NixOS checks assertions before it builds anything).
  pathOf = n: c:
    if c.var == null then gens.${secretsGen}.files.${c.fileName}.path
    else if gens ? ${c.var.generator} && gens.${c.var.generator}.files ? ${c.var.file}
    then gens.${c.var.generator}.files.${c.var.file}.path
    else "/nonexistent/vmcred-missing-var/${c.var.generator}/${c.var.file}";

  restartUnits = lib.optional settings.restartOnChange "microvm@${vm}.service";

  # The secret files this instance declares: clan's defaults, written out
  # and at normal priority, so that a `group = "kvm"` elsewhere is a
  # conflicting definition, not a silent change.
  secretFile = {
    secret = true;
    deploy = true;
    owner = "root";
    group = "root";
    mode = "0400";
    neededFor = "services";
    inherit restartUnits;
  };

  validation =
    if settings.rotateOnChange then {
      rotation = settings.rotation;
      credentials = lib.mapAttrs (_: vlib.credentialSpec) own;
    }
    else if settings.rotation == 0 then null
    else { rotation = settings.rotation; };

  vmcredPackage = config.services.vmcred.package;
  hasMicrovm = options ? microvm && options.microvm ? vms;
  isQemu = builtins.elem settings.hypervisor [ "qemu" "qemu-microvm" ];
  pubValue = gens.${signingGen}.files.${vlib.signingPubFile}.value;
in
{
  imports = [ ../host.nix ];

  config = lib.mkMerge [
    {
      assertions =
        [
          {
            assertion = vlib.validName vm;
            message = "${at}: the VM name must match ${vlib.nameRe}.";
          }
          {
            assertion = badOEM == [ ];
            message = "${at}: staticOEMStrings entries must look like io.systemd.credential:NAME=VALUE; not: ${lib.concatStringsSep ", " badOEM}.";
          }
          {
            assertion = lib.all (n: !(static ? ${n})) (builtins.attrNames creds);
            message = "${at}: a name is both a credential and a static string.";
          }
        ]
        ++ lib.mapAttrsToList
          (n: c: {
            assertion = builtins.length (kindsOf c) == 1;
            message = "${at}: credentials.${n} must set exactly one of generate, prompt or var (it sets ${if kindsOf c == [ ] then "none" else lib.concatStringsSep " and " (kindsOf c)}).";
          })
          creds
        ++ lib.mapAttrsToList
          (n: c: {
            assertion = vlib.alphabetProblem c.generate.alphabet == null;
            message = "${at}: credentials.${n}.generate.alphabet ${toString (vlib.alphabetProblem c.generate.alphabet)}.";
          })
          generated
        ++ lib.mapAttrsToList
          (n: c: {
            assertion = vlib.validName c.fileName;
            message = "${at}: credentials.${n}.fileName must match ${vlib.nameRe}.";
          })
          own
        ++ [{
          assertion = lib.unique (lib.mapAttrsToList (_: c: c.fileName) own) == lib.mapAttrsToList (_: c: c.fileName) own;
          message = "${at}: two credentials have the same fileName.";
        }]
        ++ lib.mapAttrsToList
          (n: c: {
            assertion = gens ? ${c.var.generator} && gens.${c.var.generator}.files ? ${c.var.file};
            message = "${at}: credentials.${n}.var names ${c.var.generator}/${c.var.file}, which is not a clan vars file of this machine.";
          })
          fromVars
        ++ lib.mapAttrsToList
          (n: c: {
            assertion = !(gens ? ${c.var.generator} && gens.${c.var.generator}.files ? ${c.var.file})
              || (gens.${c.var.generator}.files.${c.var.file}.secret && gens.${c.var.generator}.files.${c.var.file}.deploy);
            message = "${at}: credentials.${n}.var: ${c.var.generator}/${c.var.file} must be a deployed secret (secret = true, deploy = true); a public var is in the world-readable Nix store.";
          })
          fromVars
        ++ map
          (x: {
            assertion = !(vlib.readableBy hypervisorUser x.file);
            message = ''
              ${at}: ${x.what} is readable by the hypervisor's user (owner ${x.file.owner}, group ${x.file.group}, mode ${x.file.mode}).
              microvm.nix runs every VM as user microvm, group kvm: such a file is open to every VM on this host (and to every member of its group), whether or not this VM runs.
              Remove owner/group/mode from it (clan's default is root:root 0400); vmcred gives the file to vmcred-push@${vm}.service (and, for QEMU, microvm@${vm}.service) with LoadCredential=, which needs no access rights at all.'';
          })
          loadedFiles;

      warnings = lib.mapAttrsToList
        (n: c: "${at}: credentials.${n} gets only ${toString (vlib.entropyBits c.generate)} bits (length ${toString c.generate.length}, ${toString (builtins.stringLength c.generate.alphabet)} characters); 128 or more is advisable for a secret.")
        (lib.filterAttrs (_: c: vlib.alphabetProblem c.generate.alphabet == null && vlib.entropyBits c.generate < 128) generated);

      clan.core.vars.generators = {
        ${secretsGen} = lib.mkIf (own != { }) {
          files = lib.mapAttrs' (_: c: lib.nameValuePair c.fileName secretFile) own;
          prompts = lib.mapAttrs
            (_: c: {
              inherit (c.prompt) type description;
              persist = false;
            })
            prompted;
          runtimeInputs = lib.concatMap (c: lib.optionals (c.generate != null) c.generate.runtimeInputs) (builtins.attrValues own);
          inherit validation;
          script = ''
            umask 077
            export LC_ALL=C
            ${vlib.randomFunction}
          '' + lib.concatStrings (lib.mapAttrsToList (vlib.credentialScript vm) own);
        };

        # The manifest signing key pair, in vmcred-host's own key file format:
        # the private half a secret like the others, the public half a public
        # var, whose .value is the guest's trust key.
        ${signingGen} = {
          files.${vlib.signingKeyFile} = secretFile;
          files.${vlib.signingPubFile}.secret = false;
          runtimeInputs = [ vmcredPackage ];
          validation = if settings.signingKey.rotation == 0 then null else { rotation = settings.signingKey.rotation; };
          script = ''
            vmcred-host keygen --out "$out/signing"
          '';
        };
      };

      services.vmcred.vms.${vm} = lib.mkMerge [
        {
          hypervisor = lib.mkIf (settings.hypervisor != null) settings.hypervisor;
          credentials = lib.mapAttrs (n: c: { file = pathOf n c; }) creds;
          inherit static;
          signingKeyFile = gens.${signingGen}.files.${vlib.signingKeyFile}.path;
          channel.cid = lib.mkIf (settings.vsock.cid != null) settings.vsock.cid;
          pushOnChange = settings.pushOnChange;
        }
        settings.vmcred
      ];
    }

    (lib.optionalAttrs hasMicrovm {
      microvm = {
        vms.${vm}.config = lib.mkIf settings.configureGuest ({ ... }: {
          imports = [ ../guest.nix ];
          microvm = lib.mkMerge [
            {
              # Defaults only: host.nix asserts that they agree.
              hypervisor = lib.mkIf (settings.hypervisor != null)
                (lib.mkDefault (if isQemu then "qemu" else settings.hypervisor));
              # microvm.nix's own default (mkDefault) is the `microvm`
              # machine on x86_64; `qemu` means q35 (SMBIOS). A user's
              # definition still wins.
              qemu.machine = lib.mkIf (settings.hypervisor == "qemu") (lib.mkOverride 900 "q35");
              vsock.cid = lib.mkIf (settings.vsock.cid != null) settings.vsock.cid;
            }
            settings.microvm
          ];
          services.vmcred-guest = {
            enable = true;
            trustedKeys = [ pubValue ];
            inherit (settings) consumers;
          };
        });
      };
    })
  ];
}
