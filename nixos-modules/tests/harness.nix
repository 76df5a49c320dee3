# Evaluates a NixOS host configuration the way a real host evaluates it, and
# prints what the tests check:
#
#   nix-instantiate --read-write-mode --store "$TMP/store" --eval --strict \
#     --json nixos-modules/tests/harness.nix --arg case ./cases/qemu-microvm.nix
#
# - the real NixOS module system: `lib.evalModules` from nixpkgs' lib
#   (third_party/nixpkgs-lib, unmodified);
# - microvm.nix's real host module (third_party/microvm.nix/nixos-modules/
#   host): every `microvm.vms.<name>.config` is evaluated by microvm.nix's
#   own `config` option type, which imports nixos/lib/eval-config.nix with
#   microvm.nix's guest module (nixos-modules/microvm: options.nix, the
#   runner lib/runner.nix and lib/runners/*.nix) and the user's modules;
# - vmcred's modules imported the way flake.nix exports them
#   (nixosModules.host / .guest / .default, evaluated from flake.nix's
#   `outputs` with stand-in inputs);
# - NixOS itself (the systemd unit options and their rendering, the option
#   declarations microvm.nix sets) and nixpkgs' packages are stand-ins:
#   standin/nixos/ and standin/pkgs.nix, each saying what it stands for.
#
# The store given with --store receives only the scripts' text (see
# standin/pkgs.nix); nothing is built.
#
# Output (JSON):
#   failedAssertions  [ message ] of the host; when there is one, the rest
#                     is empty, as NixOS stops there
#   (each VM's own failed assertions are in vms.<name>)
#   warnings          [ message ], likewise
#   microvmVms        names in microvm.vms (what microvm.nix will install)
#   kernelModules     the host's boot.kernelModules
#   units             { "<file under /etc/systemd/system>" = text } for the
#                     units whose name has "vmcred" or "microvm@" in it
#   etc               { "<path under /etc>" = text } for vmcred/…
#   vms.<name>        for each VM in microvm.vms:
#     hypervisor, extraArgsScript (its text, or null), microvmRun (the text
#     of the runner's bin/microvm-run), units (the guest's unit files that
#     mention vmcred or are consumers), kernelModules, etc and etcModes
#     (the guest's /etc/vmcred… files: text, mode), failedAssertions,
#     warnings
#   extra             what the `extra` argument returns for the evaluated
#                     host (null by default; tests/clan-extra.nix for the
#                     clan tests)
{
  # A NixOS module: the host configuration under test (tests/cases/*.nix).
  case
, system ? "x86_64-linux"
  # false: a host without microvm.nix's host module.
, withMicrovm ? true
  # More output, from the evaluated host: extra = <this function> { config, options }.
, extra ? (_host: null)
}:
let
  # nixpkgs lib, with builtins that nix 2.8 lacks filled in (see there).
  lib = import ./nix-compat.nix;
  microvm = ./third_party/microvm.nix;

  pkgs = import ./standin/pkgs.nix { inherit lib system; };

  # flake.nix's outputs, with stand-in inputs: nixpkgs' lib and
  # legacyPackages are the ones above.
  flake = import ../../flake.nix;
  nixpkgsInput = {
    inherit lib;
    outPath = toString ./standin;
    legacyPackages.${system} = pkgs;
  };
  vmcred = flake.outputs { self = vmcred // { outPath = toString ../..; }; nixpkgs = nixpkgsInput; };

  host = import ./standin/nixos/lib/eval-config.nix {
    inherit lib pkgs system;
    specialArgs = { inherit vmcred microvm; };
    modules = lib.optional withMicrovm (microvm + "/nixos-modules/host") ++ [
      vmcred.nixosModules.host
      case
    ];
  };
  cfg = host.config;

  failed = as: map (a: a.message) (lib.filter (a: !a.assertion) as);

  interesting = n: lib.hasInfix "vmcred" n || lib.hasInfix "microvm@" n;
  pickUnits = pred: files: lib.filterAttrs (n: _: pred n) files;

  # What microvm.nix's host module uses as the VM's configuration.
  guestOf = name: vm:
    if vm.flake != null then vm.flake.nixosConfigurations.${name}.config
    else if vm.evaluatedConfig != null then vm.evaluatedConfig.config
    else vm.config.config;

  # The text of a store file written by standin/pkgs.nix, found through the
  # runner's build script (`ln -s /nix/store/…-microvm-run $out/bin/…`).
  linked = runner: bin:
    let
      ctx = builtins.attrNames (builtins.getContext runner.buildCommand);
      hits = lib.filter (p: lib.hasSuffix "-${bin}" p) ctx;
    in
    if hits == [ ] then null
    else builtins.readFile (builtins.appendContext (builtins.head hits) { ${builtins.head hits} = { path = true; }; });

  scriptText = s:
    if s == null then null
    else if lib.hasPrefix builtins.storeDir s then builtins.readFile s
    else s; # a path outside the store (flake/imperative wiring)

  guestConsumers = g: g.services.vmcred-guest.consumers or [ ];

  vmResult = name: vm:
    let
      g = guestOf name vm;
      runner = g.microvm.declaredRunner;
      consumers = map (c: lib.removeSuffix ".service" c) (guestConsumers g);
      isGuestUnit = n: lib.hasInfix "vmcred" n || lib.any (c: lib.hasPrefix "${c}.service" n) consumers;
    in
    {
      hypervisor = g.microvm.hypervisor;
      qemuMachine = g.microvm.qemu.machine;
      extraArgsScript = g.microvm.extraArgsScript;
      extraArgsScriptText = scriptText g.microvm.extraArgsScript;
      microvmRun = linked runner "microvm-run";
      units = pickUnits isGuestUnit g.systemd.unitFiles;
      kernelModules = g.boot.kernelModules;
      initrdKernelModules = g.boot.initrd.kernelModules;
      etc = lib.mapAttrs (_: e: e.text or null) (lib.filterAttrs (n: _: lib.hasPrefix "vmcred" n) g.environment.etc);
      etcModes = lib.mapAttrs (_: e: e.mode or null) (lib.filterAttrs (n: _: lib.hasPrefix "vmcred" n) g.environment.etc);
      failedAssertions = failed g.assertions;
      warnings = g.warnings;
    };
  hostFailed = failed cfg.assertions;
in
# As NixOS: a failed assertion of the host stops the build of its system
# before anything else is evaluated (nixos/modules/system/activation/
# top-level.nix), so only the messages are printed then.
if hostFailed != [ ] then { failedAssertions = hostFailed; inherit (cfg) warnings; microvmVms = [ ]; kernelModules = [ ]; units = { }; etc = { }; vms = { }; extra = extra host; }
else {
  failedAssertions = hostFailed;
  inherit (cfg) warnings;
  microvmVms = if withMicrovm then builtins.attrNames cfg.microvm.vms else [ ];
  kernelModules = cfg.boot.kernelModules;
  units = pickUnits interesting cfg.systemd.unitFiles;
  etc = lib.mapAttrs (_: e: if e.text != null then e.text else scriptText (toString e.source))
    (lib.filterAttrs (n: _: lib.hasPrefix "vmcred" n) cfg.environment.etc);
  vms = if withMicrovm then lib.mapAttrs vmResult cfg.microvm.vms else { };
  extra = extra host;
}
