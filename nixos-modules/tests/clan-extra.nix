# What the clan tests read from the evaluated host besides tests/harness.nix's
# standard output (its `extra` argument): the clan vars generators (vmcred's
# service's and any others), their files' owner, group, mode and path,
# clan's finalScript text (the exact script `clan vars generate` runs), the
# sops-nix secrets clan's vars module derives from them, and the wiring
# into services.vmcred.
host:
let
  inherit (host) config;
  lib = host.lib or (import ./third_party/nixpkgs-lib/lib);
  gens = config.clan.core.vars.generators;
  fileInfo = f: {
    inherit (f) secret deploy owner group mode neededFor restartUnits;
    path = if f.secret then f.path else null;
    value = if f.secret then null else (if f.exists then f.value else null);
  };
in
{
  generators = lib.mapAttrs
    (_: g: {
      inherit (g) share validation validationHash dependencies;
      files = lib.mapAttrs (_: fileInfo) g.files;
      prompts = lib.mapAttrs (_: p: { inherit (p) type persist description; }) g.prompts;
      runtimeInputs = map (p: p.name) g.runtimeInputs;
      finalScript = builtins.readFile g.finalScript;
    })
    gens;
  sopsSecrets = lib.mapAttrs (_: s: { inherit (s) owner group mode path restartUnits; }) config.sops.secrets;
  vmcred = lib.mapAttrs
    (_: vm: {
      inherit (vm) hypervisor static signingKeyFile mode;
      credentials = lib.mapAttrs (_: c: c.file) vm.credentials;
      cid = vm.channel.cid;
    })
    config.services.vmcred.vms;
  microvmUser = config.users.users.microvm or null;
  # microvm.vsock.cid of each VM declared on the host.
  vmCids = lib.mapAttrs (_: vm: if vm.config == null then null else vm.config.config.microvm.vsock.cid)
    (lib.filterAttrs (_: vm: vm.flake == null) config.microvm.vms);
}
