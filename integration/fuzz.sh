#!/usr/bin/env bash
# make fuzz: run every fuzz target in the module for a bounded time each
# (FUZZTIME, default 20s). go test runs one fuzz target per invocation, so
# the targets are listed first. A crasher fails the run and is left in the
# package's testdata/fuzz/ for a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-20s}
n=0
for pkg in $(go list ./...); do
  targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
  for t in $targets; do
    echo "== $pkg $t ($fuzztime)"
    go test "$pkg" -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -fuzzminimizetime 1s
    n=$((n + 1))
  done
done
if [ "$n" -eq 0 ]; then echo "fuzz: no fuzz targets found" >&2; exit 1; fi
echo "fuzz: $n targets passed"
