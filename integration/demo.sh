#!/usr/bin/env bash
# make demo: the simulated VM end to end. The host packs three random
# secrets and two static strings into an SMBIOS table file, as QEMU would lay
# it out; the guest agent reads that table as if it were
# /sys/firmware/dmi/tables/DMI, verifies it and writes its credstore. The
# demo shows names, sizes and SHA-256 digests on both sides — never a value.
set -euo pipefail
cd "$(dirname "$0")/.."
host=bin/vmcred-host
guest=bin/vmcred-guest

# The credstore must be on tmpfs; /dev/shm is one on most Linux machines.
base=/dev/shm
[ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
work=$(mktemp -d "$base/vmcred-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
persistent=()
if [ "$base" != /dev/shm ]; then persistent=(--allow-persistent); fi

umask 077
mkdir -p "$work/secrets" "$work/vm"
for name in api-key db-password jwt-secret; do
  head -c 48 /dev/urandom | base64 | tr -d '\n' > "$work/secrets/$name"
  chmod 0400 "$work/secrets/$name"
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "host: the secrets (root:root 0400 files, as clan vars deploys them)"
for f in "$work"/secrets/*; do
  printf '  %-12s %4d bytes  sha256 %s\n' "$(basename "$f")" "$(wc -c < "$f")" "$(sha256sum < "$f" | cut -c1-16)…"
done

say "host: vmcred-host keygen + pack --hypervisor dmi (a signed manifest travels with them)"
"$host" keygen --out "$work/host"
"$host" pack --vm demo --hypervisor dmi --out "$work/vm/DMI" \
  --sign-key "$work/host.key" \
  --cred api-key=file:"$work/secrets/api-key" \
  --cred db-password=file:"$work/secrets/db-password" \
  --cred jwt-secret=file:"$work/secrets/jwt-secret" \
  --static ENVIRONMENT=test --static CLUSTER=demo
printf '  wrote %s (%d bytes, mode %s)\n' "$work/vm/DMI" "$(wc -c < "$work/vm/DMI")" "$(stat -c %a "$work/vm/DMI")"

say "guest: vmcred-guest list (what the firmware carries)"
"$guest" list --dmi-table "$work/vm/DMI"

say "guest: vmcred-guest load (verify against the host's key, expose in the credstore)"
"$guest" load --dmi-table "$work/vm/DMI" --trust-key "$work/host.pub" --vm demo \
  --credstore "$work/credstore" --status-dir "$work/status" "${persistent[@]}"
ls -l "$work/credstore" | sed 's/^/  /'

say "check: every secret arrived byte for byte"
fail=0
for name in api-key db-password jwt-secret; do
  h=$(sha256sum < "$work/secrets/$name" | cut -d' ' -f1)
  g=$(sha256sum < "$work/credstore/$name" | cut -d' ' -f1)
  if [ "$h" = "$g" ]; then ok=match; else ok=DIFFERENT; fail=1; fi
  printf '  %-12s host %s…  guest %s…  %s\n' "$name" "${h:0:16}" "${g:0:16}" "$ok"
done
for kv in ENVIRONMENT=test CLUSTER=demo; do
  name=${kv%%=*}; want=${kv#*=}
  if [ "$(cat "$work/credstore/$name")" = "$want" ]; then ok=match; else ok=DIFFERENT; fail=1; fi
  printf '  %-12s static string                                  %s\n' "$name" "$ok"
done
[ "$fail" = 0 ] || { echo "demo: a credential did not arrive intact" >&2; exit 1; }
say "demo passed: the guest holds exactly what the host packed, verified by signature"
