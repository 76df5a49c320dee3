# STAND-IN for NixOS's systemd units: the `systemd.services` and
# `systemd.targets` and `systemd.paths` options of nixpkgs' nixos/lib/systemd-unit-options.nix
# (commonUnitOptions, serviceOptions, with the same names, types, defaults and
# merging: list-valued unit options concatenate, unit names are checked with
# systemd-lib's unitNameType) and how nixpkgs' nixos/lib/systemd-lib.nix
# renders them (unitConfig, serviceConfig + stage2ServiceConfig's default
# `path`, serviceToUnit, commonUnitText, attrsToSection), and where
# generateUnits puts each unit: NAME for asDropinIfExists (no upstream unit
# here), NAME.d/overrides.conf for asDropin.
#
# The result is `systemd.unitFiles."<file>" = "<text>"`, the files that would
# land in /etc/systemd/system. A script (`script`, `preStart`) renders as
# ExecStart=/ExecStartPre= of a made-up store path, as makeJobScript would.
# Left out: sockets, timers, mounts, user units, initrd units.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types concatStrings concatLists mapAttrsToList
    optionalAttrs optionalString concatStringsSep;

  # systemd-lib.nix
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  toOption = x: if x == true then "true" else if x == false then "false" else toString x;
  attrsToSection = as: concatStrings (concatLists (mapAttrsToList
    (name: value: map (x: "${name}=${toOption x}\n") (if builtins.isList value then value else [ value ]))
    as));

  # systemd-unit-options.nix
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      if lib.any (def: builtins.isList def.value) defs
      then lib.concatMap (def: lib.toList def.value) defs
      else lib.mergeEqualOption loc defs;
  };
  checkService = as:
    let
      bad = n: vs: as ? ${n} && !(builtins.isList as.${n}) && !(builtins.elem as.${n} vs);
    in
    !(bad "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ])
    && !(bad "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ]);

  unitList = mkOption { default = [ ]; type = types.listOf unitNameType; };

  commonUnitOptions = { name, config, options, ... }: {
    options = {
      enable = mkOption { default = true; type = types.bool; };
      overrideStrategy = mkOption { default = "asDropinIfExists"; type = types.enum [ "asDropinIfExists" "asDropin" ]; };
      description = mkOption { default = ""; type = types.singleLineStr; };
      documentation = mkOption { default = [ ]; type = types.listOf types.str; };
      requires = unitList;
      wants = unitList;
      upholds = unitList;
      after = unitList;
      before = unitList;
      bindsTo = unitList;
      partOf = unitList;
      conflicts = unitList;
      requisite = unitList;
      onFailure = unitList;
      onSuccess = unitList;
      wantedBy = unitList;
      requiredBy = unitList;
      upheldBy = unitList;
      aliases = unitList;
      unitConfig = mkOption { default = { }; type = types.attrsOf unitOption; };
      restartTriggers = mkOption { default = [ ]; type = types.listOf types.unspecified; };
      reloadTriggers = mkOption { default = [ ]; type = types.listOf types.unspecified; };
    };
    # systemd-lib.nix unitConfig
    config.unitConfig =
      optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
      // optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
      // optionalAttrs (config.upholds != [ ]) { Upholds = toString config.upholds; }
      // optionalAttrs (config.after != [ ]) { After = toString config.after; }
      // optionalAttrs (config.before != [ ]) { Before = toString config.before; }
      // optionalAttrs (config.bindsTo != [ ]) { BindsTo = toString config.bindsTo; }
      // optionalAttrs (config.partOf != [ ]) { PartOf = toString config.partOf; }
      // optionalAttrs (config.conflicts != [ ]) { Conflicts = toString config.conflicts; }
      // optionalAttrs (config.requisite != [ ]) { Requisite = toString config.requisite; }
      // optionalAttrs (config.restartTriggers != [ ]) {
        X-Restart-Triggers = "${pkgs.writeText "X-Restart-Triggers-${name}" (toString (lib.flatten config.restartTriggers))}";
      }
      // optionalAttrs (config.description != "") { Description = config.description; }
      // optionalAttrs (config.documentation != [ ]) { Documentation = toString config.documentation; }
      // optionalAttrs (config.onFailure != [ ]) { OnFailure = toString config.onFailure; }
      // optionalAttrs (config.onSuccess != [ ]) { OnSuccess = toString config.onSuccess; };
  };

  # makeJobScript: the script's store path, /bin/NAME.
  jobScript = name: text:
    let scriptName = lib.replaceStrings [ "\\" "@" ] [ "-" "_" ] name; in
    "${pkgs.writeShellScriptBin scriptName "set -e\n\n${text}"}/bin/${scriptName}";

  serviceOptions = { name, config, ... }: {
    imports = [ commonUnitOptions ];
    options = {
      serviceConfig = mkOption { default = { }; type = types.addCheck (types.attrsOf unitOption) checkService; };
      environment = mkOption { default = { }; type = with types; attrsOf (nullOr (oneOf [ str path package ])); };
      path = mkOption { default = [ ]; type = with types; listOf (oneOf [ package str ]); };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
      postStart = mkOption { type = types.lines; default = ""; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      reloadIfChanged = mkOption { type = types.bool; default = false; };
      stopIfChanged = mkOption { type = types.bool; default = true; };
    };
    config = {
      # stage2ServiceConfig: the default PATH of a NixOS service.
      path = lib.mkAfter [ pkgs.coreutils pkgs.findutils pkgs.gnugrep pkgs.gnused pkgs.systemd ];
      # serviceConfig (systemd-lib.nix)
      environment.PATH = lib.mkIf (config.path != [ ])
        "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
      serviceConfig = lib.mkMerge [
        (lib.mkIf (config.script != "") { ExecStart = jobScript "${name}-start" config.script; })
        (lib.mkIf (config.preStart != "") { ExecStartPre = [ (jobScript "${name}-pre-start" config.preStart) ]; })
        (lib.mkIf (config.postStart != "") { ExecStartPost = [ (jobScript "${name}-post-start" config.postStart) ]; })
      ];
    };
  };

  # systemd-lib.nix commonUnitText / serviceToUnit / targetToUnit
  commonUnitText = def: lines:
    "[Unit]\n${attrsToSection def.unitConfig}\n"
    + lines
    + optionalString (def.wantedBy != [ ]) "\n[Install]\nWantedBy=${concatStringsSep " " def.wantedBy}\n";

  serviceText = def: commonUnitText def (
    "[Service]\n"
    + concatStrings (map (n: optionalString (def.environment.${n} != null) "Environment=${builtins.toJSON "${n}=${def.environment.${n}}"}\n")
      (builtins.attrNames def.environment))
    + (if def.reloadIfChanged then "X-ReloadIfChanged=true\n"
    else if !def.restartIfChanged then "X-RestartIfChanged=false\n" else "")
    + optionalString (!def.stopIfChanged) "X-StopIfChanged=false\n"
    + attrsToSection def.serviceConfig);

  targetText = def: "[Unit]\n${attrsToSection def.unitConfig}\n";

  # pathOptions (systemd-unit-options.nix), pathToUnit (systemd-lib.nix).
  pathOptions = { ... }: {
    imports = [ commonUnitOptions ];
    options.pathConfig = mkOption { default = { }; type = types.attrsOf unitOption; };
  };
  pathText = def: commonUnitText def "[Path]\n${attrsToSection def.pathConfig}\n";

  # generateUnits: where each unit's text lands.
  fileName = unit: def:
    if !def.enable then "${unit} -> /dev/null"
    else if def.overrideStrategy == "asDropin" then "${unit}.d/overrides.conf"
    else unit;

  files = suffix: render: defs: lib.mapAttrs'
    (n: def: lib.nameValuePair (fileName "${n}.${suffix}" def) (if def.enable then render def else ""))
    defs;
in
{
  options.systemd = {
    services = mkOption { default = { }; type = types.attrsOf (types.submodule serviceOptions); };
    targets = mkOption { default = { }; type = types.attrsOf (types.submodule commonUnitOptions); };
    paths = mkOption { default = { }; type = types.attrsOf (types.submodule pathOptions); };
    unitFiles = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      description = "Stand-in output: file under /etc/systemd/system -> its text.";
    };
    # Set by microvm.nix's guest modules; not rendered here.
    sockets = mkOption { default = { }; type = types.attrsOf (types.submodule { options.enable = mkOption { type = types.bool; default = true; }; }); };
    mounts = mkOption { default = [ ]; type = types.listOf types.attrs; };
    generators = mkOption { default = { }; type = types.attrsOf types.path; };
    tmpfiles.settings = mkOption { default = { }; type = types.attrsOf types.anything; };
    network.wait-online.enable = mkOption { type = types.bool; default = true; };
    tpm2.enable = mkOption { type = types.bool; default = true; };
  };

  config.systemd.unitFiles =
    files "service" serviceText config.systemd.services
    // files "target" targetText config.systemd.targets
    // files "path" pathText config.systemd.paths;
}
