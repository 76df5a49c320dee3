# STAND-IN for a nixpkgs package set (`pkgs`), for evaluation tests only.
#
# It stands for what microvm.nix's modules and runner (lib/runner.nix,
# lib/runners/*.nix), microvm.nix's host module and vmcred's modules take
# from `pkgs`, and nothing else: a package is a derivation-like attribute set
# whose outPath is a made-up store path ("/nix/store/<hash>-<name>") that
# is never built. Scripts are real: writeShellScript, writeText and
# writeShellScriptBin write their text into the Nix store of the evaluation
# (builtins.toFile; the tests run nix-instantiate --read-write-mode with a
# throwaway --store), so a test can read back the exact text that
# microvm.nix renders (microvm-run) and that vmcred generates
# (extraArgsScript), the way `cat /nix/store/…` would on a real host.
#
# Mirrors (behaviour, not code): nixpkgs pkgs/build-support/trivial-builders
# (writeShellScript: "#!${runtimeShell}\n" + text; writeShellScriptBin:
# $out/bin/<name>), pkgs/stdenv (stdenv.hostPlatform = lib.systems.elaborate
# system), pkgs/top-level (callPackage, path).
#
# An attribute that microvm.nix or a module asks for and is missing here
# fails the evaluation with "attribute … missing": add it to `names` below.
{ lib
, system ? "x86_64-linux"
  # Where `${pkgs.path}/nixos/lib/eval-config.nix` is found: microvm.nix's
  # `microvm.vms.<name>.config` type imports it to evaluate a VM (see
  # ./nixos/lib/eval-config.nix, the stand-in for NixOS's).
, path ? ./.
}:
let
  hash = s: builtins.substring 0 32 (builtins.hashString "sha256" s);
  storePath = name: "/nix/store/${hash name}-${name}";

  # A package that is never built. Interpolating it gives its store path.
  mkPackage = args:
    let
      name = args.name or "${args.pname}-${args.version or "0"}";
      self = {
        type = "derivation";
        inherit name system;
        pname = args.pname or name;
        version = args.version or "0";
        outPath = args.outPath or (storePath name);
        drvPath = storePath "${name}.drv";
        outputs = [ "out" ];
        meta = { mainProgram = args.pname or name; } // (args.meta or { });
        # Package overrides (microvm.nix's qemu runner overrides qemu):
        # the same stand-in, renamed so that the override shows.
        override = _: mkPackage (args // { name = "${name}-overridden"; });
        overrideAttrs = _: mkPackage (args // { name = "${name}-overridden"; });
        passthru = args.passthru or { };
        # What microvm.nix's runners read off packages.
        configureFlags = [ ];
        buildInputs = [ ];
      } // (args.passthru or { }) // (removeAttrs args [ "name" "pname" "version" "meta" "passthru" "outPath" ]);
      out = self;
    in
    self // { inherit out; bin = self; dev = self; lib = self; };

  # A file with this text in the evaluation's store (see above).
  textFile = name: text: executable:
    let
      # Store path names allow [A-Za-z0-9+._?=-] only.
      file = builtins.toFile (lib.replaceStrings [ "@" ":" "/" " " ] [ "-" "-" "-" "-" ] name) text;
    in
    mkPackage { inherit name; outPath = file; passthru = { inherit text executable; }; };

  runtimeShell = "${pkgs.bash}/bin/bash";

  # Packages microvm.nix's runners and modules name.
  names = [
    "bash" "coreutils" "coreutils-full" "findutils" "gnugrep" "gnused" "gawk"
    "systemd" "util-linux" "iproute2" "kmod" "socat" "netcat" "curl" "jq"
    "python3" "expect" "openssl" "vim" "htop" "libusb1" "OVMF" "linux"
    "qemu" "qemu_kvm" "qemu-utils" "cloud-hypervisor" "cloud-hypervisor-graphics"
    "firecracker" "crosvm" "kvmtool" "stratovirt" "alioth" "vfkit" "virtiofsd"
    "erofs-utils" "squashfs-tools-ng" "squashfsTools" "cpio" "e2fsprogs"
  ];

  pkgs = lib.genAttrs names (n: mkPackage { name = n; pname = n; })
    // {
    # The kernel image's file name (nixpkgs: linux-kernel.target of the
    # platform), which microvm.nix's runner appends to the kernel's path.
    linux = mkPackage { name = "linux"; target = if lib.hasPrefix "aarch64" system then "Image" else "bzImage"; };
    # What types.pkgs checks (microvm.vmHostPackages).
    _type = "pkgs";
    inherit lib path system runtimeShell;
    # For the other stand-ins (nixos/modules/system.nix): a package by name.
    mkPackageStandIn = name: mkPackage { inherit name; };
    stdenv = {
      hostPlatform = lib.systems.elaborate system;
      buildPlatform = lib.systems.elaborate system;
      targetPlatform = lib.systems.elaborate system;
    };
    buildPackages = pkgs;
    pkgsBuildBuild = pkgs;
    overlays = [ ];

    # pkgs.callPackage FN ARGS: vmcred's package.nix and microvm.nix's
    # microvm-command.nix. Not built: a package named after the file.
    callPackage = fn: _args:
      mkPackage { name = if builtins.isPath fn then baseNameOf (toString fn) else "callPackage"; };

    writeText = name: text: textFile name text false;
    # writeScript: the text as it is, executable (clan's vars finalScript).
    writeScript = name: text: textFile name text true;
    writeShellScript = name: text: textFile name "#!${runtimeShell}\n${text}" true;
    writeShellScriptBin = name: text:
      let s = textFile name "#!${runtimeShell}\n${text}" true; in
      mkPackage { inherit name; passthru = { inherit (s) text; script = s; }; };
    # The build script is kept (passthru) so that a test can find the
    # scripts it links, e.g. microvm.nix's runner's bin/microvm-run.
    runCommand = name: env: buildCommand:
      mkPackage ({ inherit name; } // removeAttrs env [ "passthru" "meta" ] // {
        passthru = (env.passthru or { }) // { inherit buildCommand; };
        meta = env.meta or { };
      });
    runCommandLocal = pkgs.runCommand;
    closureInfo = _: mkPackage { name = "closure-info"; };
    writeClosure = _: mkPackage { name = "store-paths"; };
    replaceVars = src: _: mkPackage { name = baseNameOf (toString src); };
    writers = {
      writeJSON = name: value: textFile name (builtins.toJSON value) false;
      writePython3 = name: _: _: mkPackage { inherit name; };
    };
    python3Packages.supervisor = mkPackage { name = "supervisor"; };
    formats = { };
  };
in
pkgs
