# A declarative QEMU VM on QEMU's `microvm` machine (microvm.nix's default on
# x86_64): credentials by fw_cfg files, channel on AF_VSOCK.
{ vmcred, ... }:
{
  services.vmcred.vms.qvm = {
    credentials.API_KEY.file = "/run/secrets/qvm/api-key";
    static.ENVIRONMENT = "test";
    signingKeyFile = "/run/secrets/qvm/signing.key";
  };
  microvm.vms.qvm.config = {
    microvm = {
      hypervisor = "qemu";
      vsock.cid = 5;
    };
    services.vmcred-guest = {
      enable = true;
      trustedKeys = [ "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1" ];
      consumers = [ "app" ];
    };
    systemd.services.app = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig.LoadCredential = [ "api-key:API_KEY" ];
      script = "test -s $CREDENTIALS_DIRECTORY/api-key";
    };
  };
}
