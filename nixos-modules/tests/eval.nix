# Evaluates host.nix or guest.nix offline, against stub-lib.nix and stub pkgs,
# the way the NixOS module system would for a configuration that sets each
# option at most once:
#   nix-instantiate --eval --strict --json tests/eval.nix \
#     --arg module ./guest.nix --arg config '{ services.vmcred-guest.enable = true; }'
# Prints { config, assertions, warnings, scripts, guests }:
#  - config: the module's `config` with mkIf/mkMerge/mkDefault resolved;
#  - assertions: [ { assertion, message } ] from the module and, for the host
#    module, from the modules it adds to each VM (`guests`);
#  - scripts: host only, the text of each VM's generated extraArgsScript;
#  - guests: host only, the module added to microvm.vms.<name>.config,
#    evaluated against guestConfig.
# Unknown option names and values of the wrong type throw, as in NixOS.
{
  # Path of the module under test.
  module,
  # Values for the module's own options, like a user's configuration.
  config ? { },
  # Other modules' config the module reads (microvm.stateDir, microvm.vms…).
  foreignConfig ? { },
  # Other modules' `options` (e.g. { microvm.vms = { }; } for microvm.nix).
  foreignOptions ? { },
  # The VM configurations the host module's guest modules see, by VM name:
  # { config = { microvm… services.vmcred-guest… }; options = { … }; }.
  guests ? { },
  # What pkgs.callPackage returns: ExecStart= becomes PACKAGE/bin/….
  package ? "/usr",
}:
let
  lib = import ./stub-lib.nix;
  inherit (builtins) attrNames filter isAttrs isFunction isList isPath mapAttrs toString;

  pkgs = {
    callPackage = _fn: _args: package;
    coreutils = "/nix/store/stub-coreutils";
    writeShellScript = name: text: {
      type = "derivation";
      inherit name text;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    };
  };

  isOption = x: isAttrs x && (x._type or null) == "option";

  fillOptions = path: opts: vals:
    let
      unknown = filter (n: !(opts ? ${n})) (attrNames vals);
    in
    if unknown != [ ] then throw "The option `${path}${builtins.head unknown}' does not exist."
    else mapAttrs
      (n: o:
        if isOption o then fillOption "${path}${n}" o (vals ? ${n}) (vals.${n} or null)
        else fillOptions "${path}${n}." o (vals.${n} or { }))
      opts;

  fillOption = path: o: has: v:
    let
      value =
        if has then v
        else if o ? default then o.default
        else throw "The option `${path}' is used but not defined.";
    in
    applyType path o.type value;

  applyType = path: t: v:
    if t.name == "submodule" then fillModule path t.module path v
    else if t.name == "attrsOf" && t.elemType.name == "submodule"
    then mapAttrs (k: x: fillModule "${path}.${k}" t.elemType.module k x) v
    else if t.check v then v
    else throw "The option `${path}' has a value that is not of type ${t.name}.";

  fillModule = path: m: name: vals:
    let
      mod = if isFunction m then m { inherit name lib; config = result; } else m;
      result = fillOptions "${path}." mod.options vals;
    in
    result;

  absent = { _type = "absent"; };
  isAbsent = x: isAttrs x && (x._type or null) == "absent";

  resolve = x:
    if isAttrs x then
      let t = x._type or null; in
      if t == "if" then (if x.condition then resolve x.content else absent)
      else if t == "merge" then builtins.foldl' merge absent (map resolve x.contents)
      else if t == "override" then resolve x.content
      else if x ? outPath then x
      else lib.filterAttrs (_: v: !(isAbsent v)) (mapAttrs (_: resolve) x)
    else x;

  merge = a: b:
    if isAbsent a then b
    else if isAbsent b then a
    else if isAttrs a && isAttrs b && !(a ? outPath) && !(b ? outPath)
    then a // mapAttrs (n: bv: if a ? ${n} then merge a.${n} bv else bv) b
    else if isList a && isList b then a ++ b
    else if a == b then a
    else throw "conflicting definitions: ${builtins.toJSON a} and ${builtins.toJSON b}";

  # Applies a module (function or attribute set) and resolves its config.
  moduleConfig = m: args:
    let
      r = if isFunction m then m args else m;
      body = if r ? config || r ? options then (r.config or { }) else removeAttrs r [ "_file" "imports" ];
    in
    resolve body;

  evaluated = import module {
    inherit lib pkgs;
    config = lib.foldl' merge foreignConfig [ own ];
    options = foreignOptions // evaluated.options;
  };
  own = fillOptions "" evaluated.options config;

  resolved = resolve evaluated.config;

  guestResults = mapAttrs
    (name: vm:
      if vm ? config && isFunction vm.config then
        moduleConfig vm.config {
          inherit lib pkgs name;
          config = (guests.${name} or { }).config or { };
          options = (guests.${name} or { }).options or { };
        }
      else null)
    (resolved.microvm.vms or { });

  # JSON-safe: no functions, no paths (toJSON would copy them to the store).
  sanitize = x:
    if isFunction x then "<function>"
    else if isPath x then toString x
    else if isList x then map sanitize x
    else if isAttrs x then (if x ? outPath then toString x.outPath else mapAttrs (_: sanitize) x)
    else x;

  guestAssertions = builtins.concatLists (map (g: if g == null then [ ] else g.assertions or [ ]) (builtins.attrValues guestResults));
in
sanitize {
  config = resolved;
  assertions = (resolved.assertions or [ ]) ++ guestAssertions;
  warnings = resolved.warnings or [ ];
  scripts = mapAttrs (_: vm: vm.runtimeArgsScript.text) (own.services.vmcred.vms or { });
  guests = guestResults;
}
