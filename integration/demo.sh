#!/usr/bin/env bash
# make demo: the simulated VM end to end, host-dialed (DESIGN §8).
#
# The host packs three random secrets and two static strings into an SMBIOS
# table file, laid out as QEMU would, with a signed manifest; a 4 MiB secret
# (over systemd's 1 MiB, never in firmware) is left to the host's session.
# The guest agent starts (vmcred-guest agent: it would listen on privileged
# vsock port 730, which only guest root can bind; here a Unix socket in a
# private folder stands for it), loads what the table carries and waits.
# The host dials the agent (vmcred-host push): the agent sends a fresh
# challenge, the host answers with a manifest signed over it and the values,
# the agent verifies everything, writes its credstore all or nothing and
# reports on the same connection; the host records the report and `wait`
# sees the guest ready. The demo shows names, sizes and SHA-256 digest
# prefixes on both sides — never a value.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$PWD/bin/vmcred-host
guest=$PWD/bin/vmcred-guest

# The credstore must be on tmpfs; /dev/shm is one on most Linux machines.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/vmcred-demo.XXXXXX")
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
persistent=()
if [ "$base" != /dev/shm ]; then persistent=(--allow-persistent); fi

umask 077
mkdir -p "$work/secrets" "$work/vm"
for name in api-key db-password jwt-secret; do
  head -c 48 /dev/urandom | base64 | tr -d '\n' > "$work/secrets/$name"
done
head -c $((4 << 20)) /dev/urandom > "$work/secrets/disk-key"
chmod 0400 "$work"/secrets/*
sources=(--cred api-key=file:"$work/secrets/api-key" --cred db-password=file:"$work/secrets/db-password"
  --cred jwt-secret=file:"$work/secrets/jwt-secret" --cred disk-key=file:"$work/secrets/disk-key"
  --static ENVIRONMENT=test --static CLUSTER=demo)

# Bold headings on a terminal only: piped or logged, escapes are noise.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
digest() { sha256sum < "$1" | cut -d' ' -f1; }

say "host: the secrets (root:root 0400 files, as clan vars deploys them)"
for f in "$work"/secrets/*; do
  printf '  %-12s %8d bytes  sha256 %.16s…\n' "$(basename "$f")" "$(wc -c < "$f")" "$(digest "$f")"
done

say "host: vmcred-host keygen, then pack --hypervisor dmi (firmware for what fits)"
"$host" keygen --out "$work/host"
"$host" pack --vm demo --hypervisor dmi --out "$work/DMI" --sign-key "$work/host.key" "${sources[@]}" \
  --overflow channel --runtime-dir "$work/host-run"
printf '  wrote %s: %d bytes, mode %s\n' "$work/DMI" "$(wc -c < "$work/DMI")" "$(stat -c %a "$work/DMI")"

say "guest: vmcred-guest list (what the firmware carries; disk-key is not there)"
"$guest" list --dmi-table "$work/DMI"

say "guest: vmcred-guest agent (loads the firmware, listens for the host's session)"
sock="$work/vm/agent.sock"
"$guest" agent --listen "unix:$sock" --dmi-table "$work/DMI" --trust-key "$work/host.pub" --vm demo \
  --credstore "$work/credstore" --status-dir "$work/status" --system-credentials "" --consumers none "${persistent[@]}" 2> "$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "demo: the agent did not start" >&2; cat "$work/agent.log" >&2; exit 1; }
sed 's/^/  /' "$work/agent.log"

say "host: vmcred-host wait, then vmcred-host push (dial the agent, signed session)"
"$host" wait --vm demo --status-dir "$work/host-status" --timeout 30s > "$work/wait.out" &
wait_pid=$!
"$host" push --vm demo --connect "unix:$sock" --sign-key "$work/host.key" --status-dir "$work/host-status" "${sources[@]}"
ls -l "$work/credstore" | sed 's/^/  /'

say "host: readiness, as the agent reported it on the session the host dialed"
wait "$wait_pid" || { echo "demo: vmcred-host wait did not see the guest ready" >&2; exit 1; }
sed 's/^/  /' "$work/wait.out"

say "guest: vmcred-guest status, and verify against the manifest the agent accepted"
"$guest" status --status-dir "$work/status"
"$guest" verify --dmi-table "$work/DMI" --trust-key "$work/host.pub" --vm demo --credstore "$work/credstore" \
  --status-dir "$work/status" --system-credentials "" --search-path "$work/credstore" > "$work/verify.out" \
  || { cat "$work/verify.out"; echo "demo: verify failed" >&2; exit 1; }
head -3 "$work/verify.out" | sed 's/^/  /'

say "check: every secret arrived byte for byte"
fail=0
for name in api-key db-password jwt-secret disk-key; do
  h=$(digest "$work/secrets/$name")
  g=$(digest "$work/credstore/$name")
  if [ "$h" = "$g" ]; then ok=match; else ok=DIFFERENT; fail=1; fi
  printf '  %-12s host %.16s…  guest %.16s…  %s\n' "$name" "$h" "$g" "$ok"
done
for kv in ENVIRONMENT=test CLUSTER=demo; do
  name=${kv%%=*}
  if [ "$(cat "$work/credstore/$name")" = "${kv#*=}" ]; then ok=match; else ok=DIFFERENT; fail=1; fi
  printf '  %-12s static string                                   %s\n' "$name" "$ok"
done
[ "$fail" = 0 ] || { echo "demo: a credential did not arrive intact" >&2; exit 1; }

say "check: a session signed by another key is refused, and nothing changes"
"$host" keygen --out "$work/other" > /dev/null
if "$host" push --vm demo --connect "unix:$sock" --sign-key "$work/other.key" --status-dir "$work/host-status-2" "${sources[@]}" 2> "$work/refused.log"; then
  echo "demo: a session signed by an unknown key was accepted" >&2; exit 1
fi
grep -q 'signed by an untrusted key' "$work/refused.log" && echo '  refused: the manifest is signed by an untrusted key; push exited 1'
for name in api-key disk-key; do
  [ "$(digest "$work/secrets/$name")" = "$(digest "$work/credstore/$name")" ] || { echo "demo: the refused session changed $name" >&2; exit 1; }
done
say "host: rotate api-key without a reboot: push --dry-run first (names and sizes only)"
head -c 48 /dev/urandom | base64 | tr -d '\n' > "$work/secrets/api-key.new"
chmod 0400 "$work/secrets/api-key.new"
rot_sources=("${sources[@]/api-key=file:$work\/secrets\/api-key/api-key=file:$work/secrets/api-key.new}")
ino() { stat -c %i "$work/credstore/$1"; }
db_ino=$(ino db-password)
"$host" push --vm demo --connect "unix:$sock" --sign-key "$work/host.key" --status-dir "$work/host-status" --dry-run "${rot_sources[@]}" 2>/dev/null | sed 's/^/  /'
say "host: vmcred-host push (generation 2: the agent swaps the credstore in one exchange)"
"$host" push --vm demo --connect "unix:$sock" --sign-key "$work/host.key" --status-dir "$work/host-status" "${rot_sources[@]}" 2>/dev/null | sed 's/^/  /'
[ "$(digest "$work/credstore/api-key")" = "$(digest "$work/secrets/api-key.new")" ] || { echo "demo: the rotation did not deliver the new api-key" >&2; exit 1; }
[ "$(ino db-password)" = "$db_ino" ] || { echo "demo: the unchanged db-password got a new file" >&2; exit 1; }
printf '  api-key      host %.16s…  guest %.16s…  match (new value)\n' "$(digest "$work/secrets/api-key.new")" "$(digest "$work/credstore/api-key")"
printf '  db-password  inode %s before and after: untouched, its services would not restart\n' "$db_ino"
say "guest: vmcred-guest status after the rotation (here no systemd is asked: --consumers none;"
echo "   in a VM the agent restarts the running services that use api-key and lists them here)"
"$guest" status --status-dir "$work/status" | sed -n '/^Generation/,/^Not after/p' | grep -v '^Not after' | sed 's/^/  /'
say "demo passed: the guest holds exactly what the host sent, verified by signature over its own challenge, and the host knows; a rotation swapped it without a restart of anything that did not change"
