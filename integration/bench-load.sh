#!/usr/bin/env bash
# bench-load.sh: issue 9's whole-process figures for `vmcred-guest load`,
# as BENCHMARKS.md records them. Needs hyperfine (apt-get install -y
# hyperfine) and /dev/shm on tmpfs. Not part of `make test`: timings on a
# shared machine are for the record, never assertions.
#
#   integration/bench-load.sh [GUEST_BINARY ...]
#
# With no argument it measures bin/vmcred-guest (run `make build` first);
# with several (e.g. a before and an after build) it interleaves them in
# the same hyperfine runs. Prints each command's median, mean and min.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "bench-load.sh: needs hyperfine (apt-get install -y hyperfine)" >&2; exit 2; }
RUNS=${RUNS:-400}
guests=("$@")
[ ${#guests[@]} -gt 0 ] || guests=(bin/vmcred-guest)

W=$(mktemp -d /dev/shm/vmcred-bench-load.XXXXXX)
trap 'rm -rf "$W"' EXIT
umask 077
mkdir -p "$W/secrets" "$W/bin"
export CGO_ENABLED=0
go build -trimpath -ldflags '-s -w' -o "$W/bin/nop" ./integration/cmd/nop
go build -trimpath -ldflags '-s -w' -o "$W/bin/loadfloor" ./integration/cmd/loadfloor
[ -x bin/vmcred-host ] || make build >/dev/null
for i in $(seq -w 1 100); do head -c 32 /dev/urandom > "$W/secrets/cred-$i"; done
bin/vmcred-host keygen --out "$W/host" >/dev/null
args=(); for f in "$W"/secrets/*; do args+=(--cred "$(basename "$f")=file:$f"); done
bin/vmcred-host pack --vm bench --hypervisor dmi --out "$W/DMI" --sign-key "$W/host.key" "${args[@]}" 2>/dev/null
L="--dmi-table $W/DMI --trust-key $W/host.pub --vm bench --system-credentials /nonexistent"

cmds=("$W/bin/nop" "$W/bin/loadfloor rename $W/cs 100" "$W/bin/loadfloor swap $W/cs 100")
for g in "${guests[@]}"; do
	g=$(realpath "$g")
	cmds+=("$g --version" "$g load $L --credstore $W/cs --status-dir $W/st")
done
hyperfine -N --warmup 30 --runs "$RUNS" --prepare "rm -rf $W/cs $W/cs.stage $W/st" \
	--export-json "$W/h.json" "${cmds[@]}" 2>&1 >/dev/null |
	grep -v -e 'Statistical outliers' -e 'might help' -e '^ *$' >&2 || true
python3 - "$W/h.json" "$W" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = sys.argv[2]
print(f"{'median':>8} {'mean':>8} {'min':>8}  command (ms; {w} shortened to $W)")
for r in d["results"]:
    print(f"{r['median']*1e3:8.2f} {r['mean']*1e3:8.2f} {r['min']*1e3:8.2f}  {r['command'].replace(w, '$W')}")
PY
