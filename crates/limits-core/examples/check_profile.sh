#!/bin/sh
# Counts instructions and simulated cache misses of the check benchmark's
# traffic, building the population uninstrumented.
#   crates/limits-core/examples/check_profile.sh BINARY OUT [--record 1]
# STEPS sets the measured steps (default 20000).
# CG_EXTRA adds valgrind options (e.g. CG_EXTRA=--dump-instr=yes).
set -eu
bin=$1; out=$2; shift 2
flag=$(mktemp -u /tmp/check_profile.XXXXXX)
log=$(mktemp /tmp/check_profile_log.XXXXXX)
valgrind --tool=callgrind --cache-sim=yes ${CG_EXTRA:-} --instr-atstart=no \
    --toggle-collect='*measured_steps*' --callgrind-out-file="$out" \
    "$bin" --population 100000 --steps "${STEPS:-20000}" --wait-file "$flag" "$@" >"$log" 2>&1 &
vg=$!
until grep -q ready "$log"; do sleep 1; done
callgrind_control -i on "$vg" >/dev/null
touch "$flag"
wait "$vg"
rm -f "$flag"
grep -E 'steps|Collected|I   refs|D1  misses|LL misses' "$log"
rm -f "$log"
