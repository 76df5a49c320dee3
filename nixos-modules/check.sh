#!/usr/bin/env bash
# Syntax-checks every .nix file with `nix-instantiate --parse` (offline, no
# nixpkgs needed). Exit 1 and file:line:col on the first file that does not
# parse.
#
#   nixos-modules/check.sh            # every .nix file in the repository
#   nixos-modules/check.sh DIR|FILE…  # just these
#
# Without nix-instantiate it skips with a hint, except under CI=true, where a
# missing tool is a failure (CI must never pass by skipping).
set -euo pipefail

if ! command -v nix-instantiate >/dev/null 2>&1; then
	hint="nix-instantiate not found; install it with: apt-get install -y --no-install-recommends nix-bin"
	if [[ "${CI:-}" == "true" ]]; then
		echo "check.sh: FAIL: $hint" >&2
		exit 1
	fi
	echo "check.sh: SKIP: $hint" >&2
	exit 0
fi

# Debian's nix-bin expects a nixbld group; evaluation does not need it.
export NIX_CONFIG="${NIX_CONFIG:-build-users-group =}"

if [[ $# -eq 0 ]]; then
	set -- "$(cd "$(dirname "$0")/.." && pwd)"
fi

files=()
for arg in "$@"; do
	if [[ -d "$arg" ]]; then
		while IFS= read -r -d '' f; do
			files+=("$f")
		done < <(find "$arg" -name .git -prune -o -type f -name '*.nix' -print0 | sort -z)
	else
		files+=("$arg")
	fi
done

if [[ ${#files[@]} -eq 0 ]]; then
	echo "check.sh: no .nix files in $*" >&2
	exit 1
fi

status=0
for f in "${files[@]}"; do
	# --store dummy:// keeps nix from creating /nix/store and /nix/var.
	if ! nix-instantiate --store dummy:// --parse "$f" >/dev/null; then
		echo "check.sh: $f does not parse" >&2
		status=1
	fi
done
if [[ $status -eq 0 ]]; then
	echo "check.sh: ${#files[@]} .nix files parse"
fi
exit "$status"
