# The NixOS module the vmcred clan service's `guest` role adds to a VM that
# is itself a clan machine, for one instance. See default.nix.
#
# The VM trusts the public signing key the host role generated, read from
# the host's public vars with clanLib.getPublicValue (as clan-core's own
# services read other machines' public vars); the guest declares no
# generator of its own, so the private key is never deployed to it.
{ vlib, clanLib, settings, instanceName, roles }:

{ config, lib, ... }:

let
  hosts = builtins.attrNames (roles.host.machines or { });
  host = builtins.head hosts;
  hostSettings = roles.host.machines.${host}.settings;
  vm = if hostSettings.vmName != null then hostSettings.vmName else instanceName;
  at = "vmcred instance ${instanceName} (VM ${vm}), guest role";

  # What host.nix derives on the host for the same VM (defaults from there).
  channel = hostSettings.vmcred.channel or { };
  # The agent's port, as the host's push dials it (host.nix's default).
  port = channel.port or 730;
  mode = hostSettings.vmcred.mode or "verified";
in
{
  imports = [ ../guest.nix ];

  config = {
    assertions = [
      {
        assertion = builtins.length hosts == 1;
        message = "${at}: the instance needs exactly one machine in roles.host (has ${toString (builtins.length hosts)}).";
      }
      {
        assertion = clanLib != null;
        message = "${at}: clanLib is missing (the service must be evaluated by clan).";
      }
    ];

    services.vmcred-guest = lib.mkIf (builtins.length hosts == 1) {
      enable = true;
      trustedKeys = [
        (clanLib.getPublicValue {
          flake = config.clan.core.settings.directory;
          machine = host;
          generator = vlib.signingGenerator vm;
          file = vlib.signingPubFile;
          default = throw "${at}: no public signing key for ${vm} yet; run `clan vars generate ${host}` first.";
        })
      ];
      mode = lib.mkDefault mode;
      # The VM's name on the host: the agent's vmName (what the host's push
      # signs its sessions for) and, for QEMU under microvm.nix, the
      # host's installed args script (host.nix wires both only for VMs
      # declared on the host); and the port the push dials.
      hostVM = lib.mkDefault vm;
      port = lib.mkDefault port;
      inherit (settings) consumers;
    };
  };
}
