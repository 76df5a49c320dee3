#!/usr/bin/env bash
# bench-rotate.sh: issue 15's whole-process figure for a rotation, as
# BENCHMARKS.md records it. A rotation of 100 credentials by
# `vmcred-host push` (every value new each run, one consumer restarted)
# against a plain `vmcred-guest load` of the same 100 credentials from an
# SMBIOS table, in the same hyperfine run. Needs hyperfine and /dev/shm on
# tmpfs. Not part of `make test`: timings on a shared machine are for the
# record, never assertions.
#
# The guest side is integration/cmd/rotagent: the real agent (guest/agent)
# and guest/consumers over a fake systemd (one unit whose restart replaces
# a child process); the agent is long-lived, so what is timed is the push
# process from start to exit: sources read, dial, challenge, sign, send,
# the agent's verify, Store.Rotate and the restart, the report, the ACK,
# the host's status and state files.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "bench-rotate.sh: needs hyperfine (apt-get install -y hyperfine)" >&2; exit 2; }
RUNS=${RUNS:-200}

W=$(mktemp -d /dev/shm/vmcred-bench-rotate.XXXXXX)
agent=""
trap '[ -n "$agent" ] && kill "$agent" 2>/dev/null; rm -rf "$W"' EXIT
umask 077
mkdir -p "$W/secrets" "$W/bin" "$W/a" "$W/run"
export CGO_ENABLED=0
go build -trimpath -ldflags '-s -w' -o "$W/bin/rotagent" ./integration/cmd/rotagent
[ -x bin/vmcred-host ] || make build >/dev/null
for i in $(seq -w 1 100); do head -c 32 /dev/urandom > "$W/secrets/cred-$i"; done
bin/vmcred-host keygen --out "$W/host" >/dev/null
args=(); for f in "$W"/secrets/*; do args+=(--cred "$(basename "$f")=file:$f"); done
bin/vmcred-host pack --vm bench --hypervisor dmi --out "$W/DMI" --sign-key "$W/host.key" "${args[@]}" 2>/dev/null
L="--dmi-table $W/DMI --trust-key $W/host.pub --vm bench --system-credentials /nonexistent"

"$W/bin/rotagent" --listen "$W/a/a.sock" --credstore "$W/run/credstore" --status-dir "$W/st-agent" \
	--trust-key "$W/host.pub" --vm bench --consumes cred-001 2>"$W/agent.log" &
agent=$!
for _ in $(seq 100); do [ -S "$W/a/a.sock" ] && break; sleep 0.05; done
P="bin/vmcred-host push --vm bench --connect unix:$W/a/a.sock --sign-key $W/host.key --status-dir $W/hs --timeout 10s ${args[*]}"
# The first push is the boot's set; every timed one is a rotation.
$P >/dev/null || { cat "$W/agent.log" >&2; exit 1; }
renew="sh -c 'for f in $W/secrets/*; do head -c 32 /dev/urandom > \$f; done'"

hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$W/h.json" \
	--command-name "push: rotate 100, restart 1" --prepare "$renew" "$P" \
	--command-name "load 100 (SMBIOS)" --prepare "rm -rf $W/cs $W/st" "bin/vmcred-guest load $L --credstore $W/cs --status-dir $W/st" \
	2>&1 >/dev/null | grep -v -e 'Statistical outliers' -e 'might help' -e '^ *$' >&2 || true
grep -q '"outcome": "ready"' "$W/hs/bench.json" || { echo "bench-rotate.sh: the last push was not ready" >&2; exit 1; }
grep -q '"unit": "consumer.service"' "$W/hs/bench.json" || { echo "bench-rotate.sh: the last push restarted nothing" >&2; exit 1; }
python3 - "$W/h.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{'median':>8} {'mean':>8} {'min':>8}  command (ms)")
r = {x['command']: x for x in d["results"]}
for x in d["results"]:
    print(f"{x['median']*1e3:8.2f} {x['mean']*1e3:8.2f} {x['min']*1e3:8.2f}  {x['command']}")
p, l = d["results"][0]['median'], d["results"][1]['median']
print(f"push / load (medians): {p/l:.2f}x (target <= 1.5x)")
PY
