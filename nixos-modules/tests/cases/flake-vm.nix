# A VM from a flake that wires itself (services.vmcred-guest.hostVM).
import ./flake-vm-common.nix true
