# An imperative VM (`microvm -c`): services.vmcred.vms names it, microvm.vms
# does not. It gets the drop-in and the installed args script, and no
# microvm.vms entry.
{ ... }:
{
  services.vmcred.vms.impvm = {
    hypervisor = "qemu";
    channel.cid = 9;
    channel.port = 732;
    credentials.API_KEY.file = "/run/secrets/impvm/api-key";
    signingKeyFile = "/run/secrets/impvm/signing.key";
  };
}
