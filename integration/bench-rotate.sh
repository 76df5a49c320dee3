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
trap '[ -n "$agent" ] && kill $agent 2>/dev/null; rm -rf "$W"' EXIT
umask 077
mkdir -p "$W/secrets" "$W/bin"
export CGO_ENABLED=0
go build -trimpath -ldflags '-s -w' -o "$W/bin/rotagent" ./integration/cmd/rotagent
[ -x bin/vmcred-host ] || make build >/dev/null
for i in $(seq -w 1 100); do head -c 32 /dev/urandom > "$W/secrets/cred-$i"; done
bin/vmcred-host keygen --out "$W/host" >/dev/null
args=(); for f in "$W"/secrets/*; do args+=(--cred "$(basename "$f")=file:$f"); done
bin/vmcred-host pack --vm bench --hypervisor dmi --out "$W/DMI" --sign-key "$W/host.key" "${args[@]}" 2>/dev/null
L="--dmi-table $W/DMI --trust-key $W/host.pub --vm bench --system-credentials /nonexistent"

# Two simulated VMs: in "a" consumer.service uses cred-001 (restarted by
# every rotation); in "b" it uses a credential nobody pushes (no restart),
# which splits the restart's cost from the rest.
agents=()
for v in a:cred-001 b:none; do
	d=${v%%:*}
	mkdir -p "$W/$d" "$W/run-$d"
	"$W/bin/rotagent" --listen "$W/$d/a.sock" --credstore "$W/run-$d/credstore" --status-dir "$W/st-$d" \
		--trust-key "$W/host.pub" --vm bench --consumes "${v#*:}" 2>"$W/agent-$d.log" &
	agents+=($!)
done
agent="${agents[*]}"
for d in a b; do for _ in $(seq 100); do [ -S "$W/$d/a.sock" ] && break; sleep 0.05; done; done
P() { echo "bin/vmcred-host push --vm bench --connect unix:$W/$1/a.sock --sign-key $W/host.key --status-dir $W/hs-$1 --timeout 10s ${args[*]}"; }
# The first push is the boot's set; every timed one is a rotation.
for d in a b; do $(P $d) >/dev/null 2>&1 || { cat "$W/agent-$d.log" >&2; exit 1; }; done
renew="sh -c 'for f in $W/secrets/*; do head -c 32 /dev/urandom > \$f; done'"

hyperfine -N --warmup 10 --runs "$RUNS" --export-json "$W/h.json" \
	--command-name "push: rotate 100, restart 1" --prepare "$renew" "$(P a)" \
	--command-name "load 100 (SMBIOS)" --prepare "rm -rf $W/cs $W/st" "bin/vmcred-guest load $L --credstore $W/cs --status-dir $W/st" \
	--command-name "push: rotate 100, restart 0" --prepare "$renew" "$(P b)" \
	--command-name "push --dry-run (host side only)" --prepare "$renew" "$(P a) --dry-run" \
	2>&1 >/dev/null | grep -v -e 'Statistical outliers' -e 'might help' -e '^ *$' >&2 || true
grep -q '"state": "ready"' "$W/hs-a/bench.json" || { echo "bench-rotate.sh: the last push was not ready" >&2; exit 1; }
grep -q '"unit": "consumer.service"' "$W/hs-a/bench.json" || { echo "bench-rotate.sh: the last push restarted nothing" >&2; exit 1; }
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
