#!/usr/bin/env bash
# Quiet-gated back-to-back pairs, for a machine shared with other work (the
# method behind the "quiet-gated pairs" of BENCHMARKS.md (section "Server")). Waits for a second
# in which the machine keeps fewer than 0.1 cores busy, then runs a
# closed-loop `check` against limitsd and the baseline (5 s + 1 s each),
# then an open-loop `check` against both at half of that limitsd result.
# WORKLOAD (default check) picks another workload, e.g. WORKLOAD=rls for
# Envoy's ShouldRateLimit. Repeats until SECS (default 1200) have passed.
# Reports go to OUT (default target/bench/quiet-<time>/); count only pairs
# whose reports show other_cores < 0.15 for both runs. Release binaries
# must be built first (scripts/bench does it). Loopback only; every run is
# bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B=target/release/limits-bench
L=target/release/limitsd
OUT=${OUT:-target/bench/quiet-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
"$B" baseline >"$OUT/b.out" 2>&1 &
bp=$!
"$L" --config crates/limits-bench/bench.yaml --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$OUT/l.out" 2>&1 &
lp=$!
trap 'kill $bp $lp 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  BA=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$OUT/b.out")
  LA=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$OUT/l.out")
  [[ -n $BA && -n $LA ]] && break
  sleep 0.2
done
# Busy CPU ticks (1/100 s, all cores) over one second.
busy() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat)
  echo $((b - a))
}
end=$(($(date +%s) + ${SECS:-1200}))
n=0
while [[ $(date +%s) -lt $end ]]; do
  [[ $(busy) -lt 10 ]] || continue
  n=$((n + 1))
  echo "quiet window $n at $(date +%T)"
  run() { "$B" run --workload "${WORKLOAD:-check}" --duration 5s --warmup 1s --json "$@" 2>>"$OUT/log"; }
  run --addr "$LA" --label limitsd-memory --concurrency 64 --server-pid $lp >"$OUT/$n-l-closed.json"
  run --addr "$BA" --label baseline --concurrency 64 --server-pid $bp >"$OUT/$n-b-closed.json"
  half=$(sed -n 's/^  "throughput": \([0-9]*\).*/\1/p' "$OUT/$n-l-closed.json")
  half=$((half / 2))
  run --addr "$LA" --label limitsd-memory --rate "$half" --server-pid $lp >"$OUT/$n-l-open.json"
  run --addr "$BA" --label baseline --rate "$half" --server-pid $bp >"$OUT/$n-b-open.json"
  tail -4 "$OUT/log"
done
echo "results in $OUT"
