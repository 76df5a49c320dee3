# A declarative cloud-hypervisor VM: everything by the vsock channel
# (hybrid vsock, a Unix socket next to the VM), manifest signed.
{ ... }:
{
  services.vmcred.vms.chvm = {
    credentials.API_KEY.file = "/run/secrets/chvm/api-key";
    credentials.TLS_KEY = { file = "/run/secrets/chvm/tls.key"; policy = "reload"; };
    signingKeyFile = "/run/secrets/chvm/signing.key";
  };
  microvm.vms.chvm.config = {
    microvm = { hypervisor = "cloud-hypervisor"; vsock.cid = 7; };
    services.vmcred-guest = { enable = true; trustedKeys = [ "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1" ]; consumers = [ "app" ]; };
    systemd.services.app = { script = "true"; serviceConfig.LoadCredential = [ "k:API_KEY" ]; };
  };
}
