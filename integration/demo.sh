#!/usr/bin/env bash
# make demo: the simulated VM end to end.
#
# The host packs three random secrets and two static strings into an SMBIOS
# table file, laid out as QEMU would, with a signed manifest; a 4 MiB secret
# (over systemd's 1 MiB, never in firmware) goes by the channel instead. The
# host serves the channel on a Unix socket, the host end of hybrid vsock as
# cloud-hypervisor and Firecracker expose it. The guest agent reads the
# table as if it were /sys/firmware/dmi/tables/DMI, verifies the signature,
# fetches the channel secret, writes its credstore and reports back; the
# host's `wait` sees the guest ready. The demo shows names, sizes and SHA-256
# digests on both sides — never a value.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$PWD/bin/vmcred-host
guest=$PWD/bin/vmcred-guest

# The credstore must be on tmpfs; /dev/shm is one on most Linux machines.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/vmcred-demo.XXXXXX")
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
persistent=()
if [ "$base" != /dev/shm ]; then persistent=(--allow-persistent); fi

umask 077
mkdir -p "$work/secrets"
for name in api-key db-password jwt-secret; do
  head -c 48 /dev/urandom | base64 | tr -d '\n' > "$work/secrets/$name"
done
head -c $((4 << 20)) /dev/urandom > "$work/secrets/disk-key"
chmod 0400 "$work"/secrets/*

# Bold headings on a terminal only: piped or logged, escapes are noise.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
digest() { sha256sum < "$1" | cut -d' ' -f1; }

say "host: the secrets (root:root 0400 files, as clan vars deploys them)"
for f in "$work"/secrets/*; do
  printf '  %-12s %8d bytes  sha256 %.16s…\n' "$(basename "$f")" "$(wc -c < "$f")" "$(digest "$f")"
done

say "host: vmcred-host keygen, then pack --hypervisor dmi with a signed manifest"
"$host" keygen --out "$work/host"
sock="$work/vm.vsock_5000" # hybrid vsock: the guest dials port 5000, the host listens on <socket>_<PORT>
"$host" pack --vm demo --hypervisor dmi --out "$work/DMI" --sign-key "$work/host.key" \
  --cred api-key=file:"$work/secrets/api-key" \
  --cred db-password=file:"$work/secrets/db-password" \
  --cred jwt-secret=file:"$work/secrets/jwt-secret" \
  --cred disk-key=file:"$work/secrets/disk-key" \
  --static ENVIRONMENT=test --static CLUSTER=demo \
  --overflow channel --channel "unix:$sock" --runtime-dir "$work/host-run"
printf '  wrote %s: %d bytes, mode %s\n' "$work/DMI" "$(wc -c < "$work/DMI")" "$(stat -c %a "$work/DMI")"

say "host: vmcred-host serve (channel and readiness); vmcred-host wait"
mkdir -p "$work/host-status" # wait fails at once on a status folder that does not exist
"$host" serve --vm demo --listen "unix:$sock" --runtime-dir "$work/host-run" --status-dir "$work/host-status" &
serve_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "demo: serve did not start" >&2; exit 1; }
"$host" wait --vm demo --status-dir "$work/host-status" --timeout 30s > "$work/wait.out" &
wait_pid=$!

say "guest: vmcred-guest list (what the firmware carries; disk-key is not there)"
"$guest" list --dmi-table "$work/DMI"

say "guest: vmcred-guest load (verify the signature, fetch by channel, expose, report)"
"$guest" load --dmi-table "$work/DMI" --trust-key "$work/host.pub" --vm demo --channel "unix:$sock" \
  --credstore "$work/credstore" --status-dir "$work/status" --system-credentials "" "${persistent[@]}"
ls -l "$work/credstore" | sed 's/^/  /'

say "host: readiness, as the guest reported it"
wait "$wait_pid" || { echo "demo: vmcred-host wait did not see the guest ready" >&2; exit 1; }
sed 's/^/  /' "$work/wait.out"

say "guest: vmcred-guest status"
"$guest" status --status-dir "$work/status"

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
say "demo passed: the guest holds exactly what the host packed, verified by signature, and the host knows"
