# vmcred: vmcred-host and vmcred-guest, static (CGO_ENABLED=0).
#   pkgs.callPackage ./package.nix { }
# go.mod asks for Go 1.26: with a nixpkgs whose default Go is older, callPackage
# picks buildGo126Module when nixpkgs has it.
#
# vendorHash is the NAR hash of what `go mod vendor` writes for the source
# below; recompute it after changing go.mod, go.sum or the imports of host/,
# guest/ or shared/ (nixos-modules/README.md, "vendorHash"; the test
# TestVendorHash in nixos-modules/ fails with the new value).
{ lib
, buildGoModule
, buildGo126Module ? buildGoModule
, version ? "0.1.0"
}:

buildGo126Module {
  pname = "vmcred";
  inherit version;

  # Only what the binaries are built from, so that editing docs, tests in
  # integration/ or these modules does not rebuild them, plus
  # integration/testenv, which the tests of host/ and guest/ import (go mod
  # vendor resolves test imports too). The same files TestVendorHash
  # vendors.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../go.mod
      ../go.sum
      ../host
      ../guest
      ../shared
      ../integration/testenv
    ];
  };

  vendorHash = "sha256-VPsSFBU6Y3CWYX9zEtStReogGeCXxfM4iaZjni9Tq4I=";

  subPackages = [
    "host/cmd/vmcred-host"
    "guest/cmd/vmcred-guest"
  ];

  # Static binaries: the guest agent runs early, and the same vmcred-guest
  # must work in any guest image.
  env.CGO_ENABLED = "0";
  # buildGoModule adds -trimpath itself (and warns when GOFLAGS repeats it)
  # and -buildid=; these match the Makefile's LDFLAGS.
  ldflags = [ "-s" "-w" "-X main.version=${version}" ];

  meta = {
    description = "Get secrets from a NixOS host into micro-VMs as verified systemd credentials";
    homepage = "https://github.com/vmcred/vmcred";
    mainProgram = "vmcred-host";
    platforms = lib.platforms.linux;
  };
}
