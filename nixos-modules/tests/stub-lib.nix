# The part of nixpkgs `lib` that host.nix and guest.nix use, with the same
# semantics, so the tests can evaluate the modules with nothing but
# nix-instantiate (no nixpkgs offline). A module that needs another lib
# function fails the tests with "attribute missing": add it here, copying
# nixpkgs' definition.
#
# Types only check values (no merging): eval.nix gives every option at most
# one definition.
let
  inherit (builtins)
    all any attrNames concatLists concatStringsSep elem filter foldl'
    genList hasAttr head isAttrs isBool isFunction isInt isList isPath
    isString length listToAttrs map mapAttrs match replaceStrings stringLength
    substring tail;

  mkOptionType = attrs: { _type = "option-type"; check = _: true; } // attrs;

  hasPrefix = pref: str: substring 0 (stringLength pref) str == pref;
  hasSuffix = suff: str:
    let l = stringLength str; s = stringLength suff; in
    l >= s && substring (l - s) s str == suff;

  types = rec {
    bool = mkOptionType { name = "bool"; check = isBool; };
    str = mkOptionType { name = "str"; check = isString; };
    lines = str;
    int = mkOptionType { name = "int"; check = isInt; };
    ints = {
      between = lo: hi: mkOptionType { name = "intBetween"; check = x: isInt x && x >= lo && x <= hi; };
      positive = mkOptionType { name = "positiveInt"; check = x: isInt x && x > 0; };
      unsigned = mkOptionType { name = "unsignedInt"; check = x: isInt x && x >= 0; };
    };
    port = ints.between 0 65535;
    # nixpkgs: a path, or a string that starts with "/".
    path = mkOptionType { name = "path"; check = x: isPath x || (isString x && hasPrefix "/" x); };
    # Stub packages are store-path strings or attribute sets.
    package = mkOptionType { name = "package"; check = x: isString x || isAttrs x; };
    strMatching = re: mkOptionType { name = "strMatching ${re}"; check = x: isString x && match re x != null; };
    enum = values: mkOptionType { name = "enum"; check = x: elem x values; };
    nullOr = t: mkOptionType { name = "nullOr ${t.name}"; check = x: x == null || t.check x; };
    either = a: b: mkOptionType { name = "either ${a.name} ${b.name}"; check = x: a.check x || b.check x; };
    listOf = t: mkOptionType { name = "listOf"; elemType = t; check = x: isList x && all t.check x; };
    attrsOf = t: mkOptionType { name = "attrsOf"; elemType = t; check = x: isAttrs x && all t.check (builtins.attrValues x); };
    submodule = module: mkOptionType { name = "submodule"; inherit module; check = isAttrs; };
  };

  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
  optional = cond: elem: if cond then [ elem ] else [ ];
  optionals = cond: list: if cond then list else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: as: if cond then as else { };
  concatMap = f: list: concatLists (map f list);
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);

  escapeShellArg = arg:
    let s = toString arg; in
    if match "[[:alnum:],._+:@%/-]+" s == null
    then "'${replaceStrings [ "'" ] [ "'\\''" ] s}'"
    else s;
in
{
  inherit types hasPrefix hasSuffix nameValuePair optional optionals
    optionalString optionalAttrs concatMap mapAttrsToList escapeShellArg;
  inherit all any concatLists concatStringsSep elem filter foldl' length
    listToAttrs mapAttrs replaceStrings mapAttrs';

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: {
    _type = "option";
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  mkOptionType = mkOptionType;
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
  mkForce = content: { _type = "override"; priority = 50; inherit content; };
  literalExpression = text: { _type = "literalExpression"; inherit text; };

  removePrefix = pref: str:
    if hasPrefix pref str
    then substring (stringLength pref) (stringLength str - stringLength pref) str
    else str;
  removeSuffix = suff: str:
    if hasSuffix suff str
    then substring 0 (stringLength str - stringLength suff) str
    else str;
  filterAttrs = pred: set:
    listToAttrs (concatMap (name: let v = set.${name}; in if pred name v then [ (nameValuePair name v) ] else [ ]) (attrNames set));
  genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
  imap1 = f: list: genList (n: f (n + 1) (builtins.elemAt list n)) (length list);
  concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  escapeShellArgs = list: concatStringsSep " " (map escapeShellArg list);
  unique = foldl' (acc: e: if elem e acc then acc else acc ++ [ e ]) [ ];
}
