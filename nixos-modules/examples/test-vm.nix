# The seed's test-vm (shared/seed.md: clan vars secrets for a cloud-hypervisor
# microvm on britton-desktop, passed as SMBIOS OEM strings) rebuilt on vmcred.
# A host module: import it from machines/britton-desktop/configuration.nix
# next to microvm.nix's host module, e.g.
#
#   imports = [
#     inputs.microvm.nixosModules.host
#     ./test-vm.nix        # this file; it imports vmcred's host.nix itself
#   ];
#
# What changed from the seed, and why:
#  1. Secrets keep clan's defaults (root:root 0400). The seed's "fix"
#     (owner root, group kvm, mode 0440) let every VM on the host, and every member
#     of group kvm, read every VM's secrets, even while test-vm is off.
#     Instead vmcred-push@test-vm.service loads them with LoadCredential=
#     (services.vmcred.vms.test-vm.credentials): systemd copies them into
#     that one unit's private $CREDENTIALS_DIRECTORY, only while it runs.
#     cloud-hypervisor itself gets none of them.
#  2. No secret on a command line. The seed's OEM strings went on
#     cloud-hypervisor's argv (--platform oem_strings=[…]), readable by every
#     local user in /proc/PID/cmdline. Now the host dials the guest agent
#     through the VM's own vsock socket (`vmcred-host push`, `CONNECT 730`)
#     and hands everything over in one signed session.
#  3. Verified, not trusted blindly. The agent listens on vsock port 730,
#     which only guest root can bind, so the host knows who answers. The host
#     signs each session's manifest (name, size, SHA-256 of each credential,
#     this VM, the agent's fresh challenge) with a clan-generated Ed25519
#     key; the agent checks the signature and every credential before
#     writing /run/credstore, and fails (so the services that need the
#     secrets do not start) if anything is missing, truncated or altered.
#  4. Readiness. vmcred-ready@test-vm.service on the host becomes active
#     when the guest reported every credential verified in that session;
#     host services that talk to the VM can order after it.
#  5. Rotation without reboot. `clan vars generate --regenerate` and a
#     deploy change a secret file; vmcred-push@test-vm.path starts the push
#     again, the agent swaps /run/credstore all or nothing and restarts the
#     services that load a changed credential (demo-oem-credentials).
#  6. Names stay: the guest still sees API_KEY, DB_PASSWORD, JWT_SECRET,
#     ENVIRONMENT and CLUSTER, so demo-oem-credentials keeps its
#     LoadCredential= lines (they now resolve in /run/credstore).
{ config, lib, pkgs, ... }:

let
  vmcredPackage = config.services.vmcred.package;
  # Never hard-code /run/secrets/...: clan moved vars paths in 2026
  # (/run/secrets/vars/per-machine/<machine>/<generator>/<file>).
  secrets = config.clan.core.vars.generators.test-vm-secrets.files;
  signing = config.clan.core.vars.generators.test-vm-vmcred-signing.files;
in
{
  imports = [ ../host.nix ];

  # Secrets for test-vm, generated on the host. Only `secret = true`: owner,
  # group and mode stay at clan's defaults (root, root, 0400).
  clan.core.vars.generators.test-vm-secrets = {
    files = {
      "api-key".secret = true;
      "db-password".secret = true;
      "jwt-secret".secret = true;
    };
    runtimeInputs = [ pkgs.coreutils pkgs.openssl ];
    script = ''
      openssl rand -hex 32 | tr -d '\n' > "$out/api-key"
      openssl rand -base64 24 | tr -d '\n' > "$out/db-password"
      openssl rand -base64 48 | tr -d '\n' > "$out/jwt-secret"
    '';
  };

  # The host's manifest signing key. The private half is a secret like the
  # others; the public half is not (secret = false), so the VM's
  # configuration can read it at evaluation time (.value).
  clan.core.vars.generators.test-vm-vmcred-signing = {
    files = {
      "signing.key".secret = true;
      "signing.pub".secret = false;
    };
    runtimeInputs = [ vmcredPackage ];
    script = ''
      vmcred-host keygen --out "$out/signing"
    '';
  };

  services.vmcred.vms.test-vm = {
    # Also read from microvm.vms.test-vm.config (microvm.hypervisor); set
    # here so that a mismatch is an evaluation error.
    hypervisor = "cloud-hypervisor";
    credentials = {
      API_KEY.file = secrets."api-key".path;
      DB_PASSWORD.file = secrets."db-password".path;
      JWT_SECRET.file = secrets."jwt-secret".path;
    };
    # The seed's staticOEMStrings (io.systemd.credential:ENVIRONMENT=test,
    # io.systemd.credential:CLUSTER=britton-desktop): not secret, but now
    # delivered and verified like the secrets.
    static = {
      ENVIRONMENT = "test";
      CLUSTER = "britton-desktop";
    };
    signingKeyFile = signing."signing.key".path;
    # Defaults, spelled out: the agent's privileged vsock port 730, a push
    # again whenever a source file changes, readiness unit (and push)
    # waiting up to 120 s.
    mode = "verified";
    channel.port = 730;
    pushOnChange = true;
    waitReady = true;
  };

  # Example: a host service that must not talk to test-vm before it has its
  # secrets.
  # systemd.services.test-vm-client = {
  #   requires = [ config.services.vmcred.vms.test-vm.readyUnit ];
  #   after = [ config.services.vmcred.vms.test-vm.readyUnit ];
  # };

  microvm.vms.test-vm.config = { pkgs, lib, ... }: {
    imports = [ ../guest.nix ];

    microvm = {
      hypervisor = "cloud-hypervisor";
      vcpu = 2;
      mem = 1024;
      interfaces = [{
        type = "tap";
        id = "vm-test";
        mac = "02:00:00:01:01:01";
      }];
      shares = [{
        tag = "ro-store";
        source = "/nix/store";
        mountPoint = "/nix/.ro-store";
        proto = "virtiofs";
      }];
      # The vsock device carries systemd's notify socket (microvm.nix, host
      # port 8888) and the host's push to the agent (guest port 730).
      vsock.cid = 3;
      # No microvm.cloud-hypervisor.platformOEMStrings: nothing of ours goes
      # on cloud-hypervisor's command line.
    };

    services.vmcred-guest = {
      enable = true;
      trustedKeys = [ signing."signing.pub".value ];
      # requires + after vmcred-guest.service: demo-oem-credentials does not
      # start unless every credential was verified.
      consumers = [ "demo-oem-credentials" ];
      # mode, port and vmName ("test-vm") come from
      # services.vmcred.vms.test-vm on the host.
    };

    # From here on, the seed's machines/test-vm/configuration.nix.
    networking.hostName = "test-vm";
    system.stateVersion = "24.05";

    networking.interfaces.eth0.useDHCP = lib.mkDefault true;
    networking.firewall.allowedTCPPorts = [ 22 ];

    # Test VM only, as in the seed: password SSH login and root autologin.
    services.openssh = {
      enable = true;
      settings = {
        PermitRootLogin = "yes";
        PasswordAuthentication = true;
      };
    };
    users.users.root.initialPassword = "test";
    services.getty.autologinUser = "root";

    systemd.services.demo-oem-credentials = {
      description = "Demo OEM credentials from runtime secrets";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];

      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        StandardOutput = "journal+console";
        StandardError = "journal+console";
        # Unchanged from the seed: systemd finds these in /run/credstore,
        # written by the agent after verification.
        LoadCredential = [
          "environment:ENVIRONMENT"
          "cluster:CLUSTER"
          "api-key:API_KEY"
          "db-password:DB_PASSWORD"
          "jwt-secret:JWT_SECRET"
        ];
      };

      script = ''
        echo "╔═══════════════════════════════════════════════════════════╗"
        echo "║  vmcred credentials loaded (test-vm)                      ║"
        echo "╚═══════════════════════════════════════════════════════════╝"

        # What the agent verified: names, sizes, digest prefixes, never
        # values. (The seed's `systemd-creds --system list` shows only
        # /run/credentials/@system, where verified mode puts nothing.)
        ${vmcredPackage}/bin/vmcred-guest status

        echo ""
        echo "Static Config:"
        echo "  ENVIRONMENT = $(cat $CREDENTIALS_DIRECTORY/environment)"
        echo "  CLUSTER     = $(cat $CREDENTIALS_DIRECTORY/cluster)"
        echo ""
        echo "Runtime Secrets (length):"
        echo "  API_KEY     = $(wc -c < $CREDENTIALS_DIRECTORY/api-key) bytes"
        echo "  DB_PASSWORD = $(wc -c < $CREDENTIALS_DIRECTORY/db-password) bytes"
        echo "  JWT_SECRET  = $(wc -c < $CREDENTIALS_DIRECTORY/jwt-secret) bytes"

        if [ $(wc -c < $CREDENTIALS_DIRECTORY/api-key) -gt 10 ]; then
          echo ""
          echo "✅ Runtime secrets delivered and verified by vmcred!"
        fi
      '';
    };

    environment.systemPackages = with pkgs; [
      vim
      htop
    ];
  };
}
