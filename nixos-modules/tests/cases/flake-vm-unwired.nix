# A VM from a flake that does not set services.vmcred-guest.hostVM: the host
# must refuse it with the fix in the message.
import ./flake-vm-common.nix false
