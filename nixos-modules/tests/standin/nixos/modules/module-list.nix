# STAND-IN for nixpkgs' nixos/modules/module-list.nix: the NixOS base modules
# that every configuration is evaluated with. Only the options that
# microvm.nix's modules, vmcred's modules and the test configurations set or
# read; each file says which NixOS module it stands for.
[
  ./assertions.nix
  ./systemd.nix
  ./system.nix
  ./other-options.nix
]
