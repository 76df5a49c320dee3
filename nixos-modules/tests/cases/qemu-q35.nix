# A declarative QEMU VM on the q35 machine: credentials by SMBIOS files.
{ ... }:
{
  services.vmcred.vms.q35vm = {
    credentials.DB_PASSWORD.file = "/run/secrets/q35vm/db-password";
    signingKeyFile = "/run/secrets/q35vm/signing.key";
    channel.port = 731;
    channel.notifyPort = 8890;
  };
  microvm.vms.q35vm.config = {
    microvm = { hypervisor = "qemu"; qemu.machine = "q35"; vsock.cid = 6; };
    services.vmcred-guest = { enable = true; trustedKeys = [ "vmcred-ed25519-public AAAAC3NzaC1lZDI1NTE5AAAAIPSLmdOs0Jl8mtSUs8j1" ]; };
  };
}
