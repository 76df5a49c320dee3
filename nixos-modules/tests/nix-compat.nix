# SHIM for Debian's nix-instantiate 2.8, which lacks builtins that current
# nixpkgs lib (third_party/nixpkgs-lib, unmodified) names. Returns that lib,
# loaded with `scopedImport` so that its files (and every file they import,
# modules included) see `builtins` plus the entries below. On a newer Nix
# each entry is the real builtin (`builtins.X or …`), so the shim changes
# nothing there.
#
# What lib does with them and what stands in:
#   addDrvOutputDependencies (Nix 2.18; lib.derivations): adds a
#     derivation's outputs to a string's context. The tests build nothing
#     and their strings carry no derivation context: identity.
#   readFileType (Nix 2.14; lib.filesystem.pathType): the same answer from
#     builtins.readDir of the parent directory, which is how lib itself did
#     it before that builtin.
#   convertHash (2.19), parseFlakeRef and flakeRefToString (2.19),
#   gitLsFiles: lib only re-exports them; the tests never call them. They
#     are functions here (so printing `lib`, as lib's error messages do,
#     works) that fail with this explanation when called.
#   warn (2.23): lib.warn already falls back to builtins.trace itself.
let
  missing = name: _: throw "nix-compat.nix: builtins.${name} is not in nix-instantiate ${builtins.nixVersion} and the tests do not need it";
  shim = {
    addDrvOutputDependencies = builtins.addDrvOutputDependencies or (s: s);
    readFileType = builtins.readFileType or (p: (builtins.readDir (dirOf p)).${baseNameOf p});
    convertHash = builtins.convertHash or (missing "convertHash");
    parseFlakeRef = builtins.parseFlakeRef or (missing "parseFlakeRef");
    flakeRefToString = builtins.flakeRefToString or (missing "flakeRefToString");
    gitLsFiles = builtins.gitLsFiles or (missing "gitLsFiles");
  };
  scope = {
    builtins = builtins // shim;
    import = scopedImport scope;
    scopedImport = s: scopedImport (scope // s);
  };
in
scopedImport scope ./third_party/nixpkgs-lib/lib
