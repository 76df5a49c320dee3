# vmcred as a clan service: one inventory instance per microvm.nix VM.
#
#   inventory.instances.test-vm = {
#     module = { name = "vmcred"; input = "vmcred"; };
#     roles.host.machines.britton-desktop.settings = {
#       hypervisor = "cloud-hypervisor";
#       credentials.API_KEY.generate = { };
#       static.ENVIRONMENT = "test";
#       vsock.cid = 3;
#     };
#   };
#
# Role `host` (the machine that runs the VM): declares the clan vars
# generators for the VM's secrets (root:root 0400, never readable by the
# hypervisor's user) and for its Ed25519 manifest signing key, and wires
# both into vmcred's host module (services.vmcred.vms.<vm>): systemd hands
# the files to microvm@<vm>.service with LoadCredential=, vmcred-host packs
# and signs them for the VM. For a VM declared on the host
# (microvm.vms.<vm>.config) it also enables the guest agent in the VM and
# gives it the public key as its trust key.
#
# Role `guest` (optional; for a VM that is itself a clan machine): enables
# the guest agent there, trusting the host's public key (read with
# clanLib.getPublicValue from the host's vars).
#
# See nixos-modules/clan/README.md.
{ lib, clanLib ? null, ... }:

let
  vlib = import ./lib.nix { inherit lib; };
  inherit (lib) mkOption types;

  credentialModule = { name, config, ... }: {
    options = {
      generate = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            length = mkOption {
              type = types.ints.between 1 4096;
              default = vlib.defaultLength;
              description = "Number of characters.";
            };
            alphabet = mkOption {
              type = types.str;
              default = vlib.defaultAlphabet;
              description = ''
                The characters to draw from, each equally likely: printable
                ASCII other than space, each at most once (default A-Z, a-z,
                0-9: 32 characters give 190 bits).
              '';
            };
            script = mkOption {
              type = types.nullOr types.lines;
              default = null;
              example = "openssl rand -hex 32";
              description = ''
                Instead of length and alphabet: a shell snippet whose standard
                output is the value (messages go to standard error). It runs
                in clan's generator sandbox with `runtimeInputs` and
                coreutils on PATH; an empty output fails the generator.
              '';
            };
            runtimeInputs = mkOption {
              type = types.listOf types.package;
              default = [ ];
              description = "Packages `script` needs.";
            };
          };
        });
        default = null;
        description = "Generate the value (clan vars generate).";
      };
      prompt = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            type = mkOption {
              type = types.enum [ "hidden" "line" "multiline" "multiline-hidden" ];
              default = "hidden";
              description = "How clan asks for the value.";
            };
            description = mkOption {
              type = types.str;
              default = "vmcred credential ${name}";
              description = "Shown by `clan vars generate`.";
            };
          };
        });
        default = null;
        description = "Ask for the value when the VM's secrets are generated.";
      };
      var = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            generator = mkOption { type = types.str; description = "Name of an existing clan vars generator on the host."; };
            file = mkOption { type = types.str; description = "Name of its (secret) file."; };
          };
        });
        default = null;
        example = { generator = "test-vm-secrets"; file = "api-key"; };
        description = ''
          Use a secret file of a clan vars generator the host already has
          (for example the one made before this service): nothing is
          generated for this credential, the existing value is kept.
        '';
      };
      fileName = mkOption {
        type = types.str;
        default = name;
        description = "Name of the file in the VM's secrets generator (generate and prompt only).";
      };
    };
  };

  hostInterface = { ... }: {
    options = {
      vmName = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The VM's name in microvm.vms; null: the instance's name.";
      };
      hypervisor = mkOption {
        type = types.nullOr (types.enum [ "qemu" "qemu-microvm" "cloud-hypervisor" "firecracker" ]);
        default = null;
        description = "As services.vmcred.vms.<vm>.hypervisor; also the VM's microvm.hypervisor (as a default) when the VM is declared on the host.";
      };
      credentials = mkOption {
        type = types.attrsOf (types.submodule credentialModule);
        default = { };
        description = ''
          Secrets for the VM, by their name in the guest (LoadCredential=NAME
          there). Each sets exactly one of generate, prompt or var.
        '';
      };
      static = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { ENVIRONMENT = "test"; };
        description = "Non-secret strings, delivered and verified like the credentials (services.vmcred.vms.<vm>.static).";
      };
      staticOEMStrings = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "io.systemd.credential:ENVIRONMENT=test" ];
        description = "The seed's form of `static`: each entry `io.systemd.credential:NAME=VALUE` becomes static.NAME = VALUE.";
      };
      vsock.cid = mkOption {
        type = types.nullOr (types.ints.between 3 4294967294);
        default = null;
        description = "The VM's vsock CID (microvm.vsock.cid of a VM declared on the host; channel.cid).";
      };
      rotation = mkOption {
        type = types.ints.unsigned;
        default = 0;
        description = ''
          Increase to have `clan vars generate` make new values for every
          generated or prompted credential of the VM. Nothing else rotates
          them unless rotateOnChange is on. pushOnChange then delivers the
          new values to the running VM.
        '';
      };
      rotateOnChange = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Also make new values when the way they are made changes (length,
          alphabet, script, prompt type). Static strings, hypervisor and CID
          never rotate anything.
        '';
      };
      pushOnChange = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Rotation without reboot: when a deployment changes one of the VM's
          secret files (a new value from `clan vars generate --regenerate`,
          or from rotation / rotateOnChange), push the new set to the
          running VM (services.vmcred.vms.<vm>.pushOnChange: a path unit on
          the clan vars files starts vmcred-push@<vm>); its agent swaps the
          credentials all or nothing and restarts the services that use a
          changed one.
        '';
      };
      restartOnChange = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Also restart microvm@<vm>.service when a deployment changes one of
          its secret files (restartUnits; sops only). Not needed with
          pushOnChange, which delivers new values without a reboot.
        '';
      };
      signingKey.rotation = mkOption {
        type = types.ints.unsigned;
        default = 0;
        description = "Increase to make a new signing key pair (guests declared here get the new public key with the same deployment).";
      };
      configureGuest = mkOption {
        type = types.bool;
        default = true;
        description = ''
          For a VM declared on the host (microvm.vms.<vm>.config): import
          vmcred's guest module there, enable the agent and trust the
          signing key. Turn off for a VM built elsewhere (use the guest role).
        '';
      };
      consumers = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "services.vmcred-guest.consumers in a VM declared on the host.";
      };
      microvm = mkOption {
        type = types.attrsOf types.anything;
        default = { };
        example = { vcpu = 2; mem = 1024; };
        description = "More microvm.* options for a VM declared on the host (the seed's vcpu, mem, interfaces, shares).";
      };
      vmcred = mkOption {
        type = types.attrsOf types.anything;
        default = { };
        example = { channel.port = 731; waitReady = 300; };
        description = "More services.vmcred.vms.<vm> options (mode, channel, waitReady, setExtraArgsScript, credential policies).";
      };
    };
  };

  guestInterface = { ... }: {
    options.consumers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "services.vmcred-guest.consumers.";
    };
  };
in
{
  _class = "clan.service";
  manifest.name = "vmcred";
  manifest.description = "Secrets for microvm.nix VMs as verified systemd credentials: clan vars generate them, vmcred delivers them and the guest proves they arrived";
  manifest.categories = [ "System" ];
  manifest.readme = builtins.readFile ./README.md;

  roles.host = {
    description = "The machine that runs the VM (microvm.nix host): generates the VM's secrets and signing key and hands them to the VM.";
    interface = hostInterface;
    perInstance = { settings, instanceName, ... }: {
      nixosModule = import ./host-role.nix { inherit vlib settings instanceName; };
    };
  };

  roles.guest = {
    description = "The VM, where it is itself a clan machine: runs the vmcred guest agent, trusting the host's signing key.";
    interface = guestInterface;
    perInstance = { settings, instanceName, roles, ... }: {
      nixosModule = import ./guest-role.nix { inherit vlib clanLib settings instanceName roles; };
    };
  };
}
