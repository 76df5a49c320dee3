# A declarative Firecracker VM: no firmware carrier, channel only.
{ ... }:
{
  services.vmcred.vms.fcvm = {
    credentials.API_KEY.file = "/run/secrets/fcvm/api-key";
    signingKeyFile = "/run/secrets/fcvm/signing.key";
  };
  microvm.vms.fcvm.config = {
    microvm = { hypervisor = "firecracker"; vsock.cid = 8; };
    services.vmcred-guest = { enable = true; trustedKeys = [ "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1" ]; };
  };
}
