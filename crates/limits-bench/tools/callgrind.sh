#!/usr/bin/env bash
# Instructions per operation of a server, under callgrind: deterministic, so
# unaffected by other work on the machine (the method behind the
# "Instructions per operation" table of BENCHMARKS.md (section "Server")).
# Usage: callgrind.sh baseline|limitsd WORKLOAD
# Starts the server under valgrind, warms it up for 3 s, zeroes the
# counters, runs 6 s of closed-loop load (8 callers, one connection), dumps
# the counters and divides by the operations completed. Needs valgrind and
# the release binaries. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B=target/release/limits-bench
srv=${1:?baseline or limitsd}
w=${2:-check}
if [[ $srv == baseline ]]; then
  cmd=("$B" baseline --addr 127.0.0.1:0)
else
  cmd=(target/release/limitsd --config crates/limits-bench/bench.yaml --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0)
fi
dir=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$dir/cg" "${cmd[@]}" >"$dir/out" 2>"$dir/err" &
vp=$!
trap 'kill $vp 2>/dev/null || true; wait 2>/dev/null || true' EXIT
A=""
for _ in $(seq 300); do
  A=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$dir/out")
  [[ -n $A ]] && break
  sleep 0.2
done
[[ -n $A ]] || { echo "server did not start under valgrind" >&2; exit 1; }
load() { "$B" run --addr "$A" --workload "$w" --warmup 0s --concurrency 8 --connections 1 --timeout 20s "$@"; }
load --duration 3s >/dev/null
callgrind_control -z $vp >/dev/null
ops=$(load --duration 6s --json 2>/dev/null | sed -n 's/^  "ok": \([0-9]*\).*/\1/p')
callgrind_control -d $vp >/dev/null
kill -TERM $vp
wait $vp || true
# The dump taken after zeroing is the newest numbered file.
f=$(ls -t "$dir"/cg.* | head -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
echo "$srv $w: $ops operations, $ir instructions, $((ir / ops)) per operation ($f)"
