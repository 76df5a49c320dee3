# Helpers shared by the vmcred clan service's roles (default.nix,
# host-role.nix, guest-role.nix): generator names, the secret-generating
# shell script, alphabet checks, the seed's OEM string form.
{ lib }:

let
  # Printable ASCII without space, in code order: character i has code 33 + i.
  printable = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
  printableChars = lib.stringToCharacters printable;
  codeOf = c:
    let
      i = lib.lists.findFirstIndex (x: x == c) null printableChars;
    in
    if i == null then null else i + 33;
  octal = n: "\\${toString (n / 64)}${toString (lib.mod (n / 8) 8)}${toString (lib.mod n 8)}";

  floorLog2 = n: if n < 2 then 0 else 1 + floorLog2 (n / 2);
in
rec {
  # Same rule as host.nix: names end up in unit names, paths and
  # LoadCredential=ID:PATH lines.
  nameRe = "[A-Za-z0-9_][A-Za-z0-9_.-]*";
  validName = n: builtins.match nameRe n != null;

  # Generator names for one VM. The two suffixes differ, so no VM's secrets
  # generator can be another VM's signing generator.
  secretsGenerator = vm: "vmcred-${vm}-secrets";
  signingGenerator = vm: "vmcred-${vm}-signing";
  signingKeyFile = "signing.key";
  signingPubFile = "signing.pub";

  defaultAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  defaultLength = 32;

  # An alphabet is usable if it has at least two characters, all printable
  # ASCII other than space, none twice (a repeated character would be drawn
  # more often).
  alphabetProblem = a:
    let
      cs = lib.stringToCharacters a;
    in
    if builtins.length cs < 2 then "needs at least two characters"
    else if lib.any (c: codeOf c == null) cs then "may only hold printable ASCII characters other than space"
    else if lib.unique cs != cs then "holds a character twice"
    else null;

  # Bits of entropy of a generated value, rounded down.
  entropyBits = g: g.length * floorLog2 (builtins.stringLength g.alphabet);

  # The alphabet as a `tr` set of octal escapes: no character of it is
  # then read as a range, class or escape by tr, and none needs shell quoting.
  # (Characters it cannot take are left out; the host role's assertion
  # refuses such an alphabet.)
  trSet = a: lib.concatMapStrings (c: let n = codeOf c; in if n == null then "" else octal n) (lib.stringToCharacters a);

  # Shell function used by the secrets generator's script (run by clan's
  # finalScript under `set -euo pipefail`, coreutils on PATH): FILE gets
  # LENGTH characters drawn uniformly from the tr SET, by rejection
  # (random bytes outside SET are dropped), without a trailing newline. The
  # value lives in a shell variable only, never on a command line.
  randomFunction = ''
    vmcred_random() {
      local file=$1 want=$2 set=$3 acc="" chunk
      while [ "''${#acc}" -lt "$want" ]; do
        chunk=$(head -c 4096 /dev/urandom | tr -dc "$set")
        acc="$acc$chunk"
      done
      printf '%s' "''${acc:0:want}" > "$out/$file"
      acc=""
    }
  '';

  # The script lines that make one credential's file.
  credentialScript = vm: name: c:
    let
      file = lib.escapeShellArg c.fileName;
      what = "vmcred: credential ${name} of VM ${vm}";
    in
    # `clan vars generate` runs this without looking at NixOS assertions:
    # a file name that could escape $out or the shell stops here too.
    if !(validName c.fileName) then ''
      echo ${lib.escapeShellArg "${what}: fileName must match ${nameRe}"} >&2
      exit 1
    ''
    else if c.generate != null && c.generate.script == null then ''
      vmcred_random ${file} ${toString c.generate.length} '${trSet c.generate.alphabet}'
    ''
    else if c.generate != null then ''
      (
      ${c.generate.script}
      ) > "$out"/${file}
      if [ ! -s "$out"/${file} ]; then
        echo ${lib.escapeShellArg "${what}: the generate.script printed nothing"} >&2
        exit 1
      fi
    ''
    else if c.prompt != null then ''
      if [ ! -s "$prompts"/${lib.escapeShellArg name} ]; then
        echo ${lib.escapeShellArg "${what}: nothing was entered at the prompt"} >&2
        exit 1
      fi
      cat "$prompts"/${lib.escapeShellArg name} > "$out"/${file}
    ''
    # Neither (an assertion reports it).
    else "";

  # What, if changed, makes clan generate the VM's secrets again (clan
  # compares the hash of a generator's `validation` with the one stored
  # next to the values): how each value is made, and the rotation counter.
  # Static strings, hypervisor, CID and the like are not in it.
  credentialSpec = c:
    if c.generate != null && c.generate.script == null then "generate length=${toString c.generate.length} alphabet=${c.generate.alphabet}"
    else if c.generate != null then "script sha256=${builtins.hashString "sha256" c.generate.script}"
    else if c.prompt != null then "prompt type=${c.prompt.type}"
    else "none";

  # The seed's staticOEMStrings entries: "io.systemd.credential:NAME=VALUE".
  parseOEMString = s:
    let
      m = builtins.match "io[.]systemd[.]credential:([^=]+)=(.*)" s;
    in
    if m == null then null else { name = builtins.elemAt m 0; value = builtins.elemAt m 1; };

  # Whether a clan vars file with this owner, group and mode can be read by
  # the hypervisor's user (microvm.nix runs every VM as user `user`, with
  # the groups `groups`).
  readableBy = { user, groups }: f:
    let
      digit = i: lib.toInt (builtins.substring i 1 f.mode);
      canRead = d: lib.mod (d / 4) 2 == 1;
    in
    (f.owner == user && canRead (digit 1))
    || (builtins.elem f.group groups && canRead (digit 2))
    || canRead (digit 3);
}
