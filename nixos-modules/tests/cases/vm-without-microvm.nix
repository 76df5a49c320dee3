# A VM for vmcred on a host without microvm.nix's host module.
{ ... }:
{
  services.vmcred.vms.x = { hypervisor = "qemu"; channel.cid = 3; static.A = "1"; signingKeyFile = "/run/secrets/x/signing.key"; };
}
