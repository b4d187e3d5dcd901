#!/usr/bin/env bash
# One bounded fuzzing run, as the test command's ctest entries make it:
#   run_harness.sh BINARY CORPUS SCRATCH SECONDS
# fuzzes BINARY for SECONDS over the seed corpus CORPUS (read only: new
# inputs go to SCRATCH, emptied first) with scripts/fuzz.sh's flags. Exits
# non-zero on a crash, a leak, UB, a broken contract or a timeout; the
# input is left as SCRATCH/crash-*.
set -euo pipefail
binary=$1 corpus=$2 scratch=$3 seconds=$4
rm -rf "$scratch"
mkdir -p "$scratch/new"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
exec "$binary" -max_len=4096 -timeout=10 -entropic=0 -print_final_stats=1 \
  -max_total_time="$seconds" -artifact_prefix="$scratch/" "$scratch/new" "$corpus"
