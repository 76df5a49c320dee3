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
    # A loaded machine can make the fuzz coordinator miss its own deadline
    # ("context deadline exceeded") with no failing input; that run is
    # tried once more. A real crasher is always fatal: go test writes it to
    # testdata/fuzz/ and reports "Failing input written to".
    log=$(mktemp)
    if ! go test "$pkg" -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -fuzzminimizetime 1s 2>&1 | tee "$log"; then
      if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
        echo "== $t: the fuzz coordinator timed out without a failing input; running it once more"
        go test "$pkg" -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -fuzzminimizetime 1s
      else
        rm -f "$log"
        exit 1
      fi
    fi
    rm -f "$log"
    n=$((n + 1))
  done
done
if [ "$n" -eq 0 ]; then echo "fuzz: no fuzz targets found" >&2; exit 1; fi
echo "fuzz: $n targets passed"
