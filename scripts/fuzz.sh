#!/usr/bin/env bash
# The libFuzzer harnesses of tests/fuzz (clang++-14, ASan, UBSan), outside
# the test command:
#   scripts/fuzz.sh build                  configure and build ./build-fuzz
#   scripts/fuzz.sh seeds                  rewrite the seed corpora in
#                                          tests/fuzz/corpus/ from the project's code
#   scripts/fuzz.sh run HARNESS [FLAGS]    fuzz one harness over its corpus;
#                                          FLAGS go to libFuzzer
#   scripts/fuzz.sh long [RUNS]            every harness for RUNS executions
#                                          (default 10^7), one after another, niced;
#                                          logs in build-fuzz/long/HARNESS.log
# Harnesses: safetensors snapshot model_config infer_request stream_request
# oip_infer oip_json.
# New inputs a run finds go to build-fuzz/work/HARNESS, never into the
# repository's corpus; a crash leaves build-fuzz/crash-* (add it to the
# corpus as regress-NAME, with its regression test).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build-fuzz
harnesses=(safetensors snapshot model_config infer_request stream_request oip_infer oip_json)
# The flags every run uses (the test command's too, tests/fuzz/run_harness.sh):
# inputs up to 4 KiB, 10 s per input at most; -entropic=0 because the
# entropic scheduler's bookkeeping halves the speed of these harnesses.
common=(-max_len=4096 -timeout=10 -entropic=0 -print_final_stats=1)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

build() {
  ./scripts/install-deps.sh --test
  cmake -S tests/fuzz -B "$out" -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
  cmake --build "$out" -j "$(nproc 2>/dev/null || echo 2)"
}

case ${1:-} in
  build)
    build
    ;;
  seeds)
    build
    for h in "${harnesses[@]}"; do
      mkdir -p "tests/fuzz/corpus/$h"
      "$out/fuzz_$h" --write_seeds="$root/tests/fuzz/corpus/$h"
    done
    # The shipped repository's configs, as ssm_make_repo writes them.
    for config in models/*/config.pbtxt; do
      name=$(basename "$(dirname "$config")")
      cp "$config" "tests/fuzz/corpus/model_config/shipped-$name.pbtxt"
    done
    ;;
  run)
    h=${2:?"usage: scripts/fuzz.sh run HARNESS [libFuzzer flags]"}
    shift 2
    mkdir -p "$out/work/$h"
    "$out/fuzz_$h" "${common[@]}" -artifact_prefix="$out/" "$@" \
      "$out/work/$h" "$root/tests/fuzz/corpus/$h"
    ;;
  long)
    runs=${2:-10000000}
    build
    mkdir -p "$out/long"
    for h in "${harnesses[@]}"; do
      mkdir -p "$out/work/$h"
      echo "fuzz: $h, $runs runs, log $out/long/$h.log"
      nice -n 10 "$out/fuzz_$h" "${common[@]}" -runs="$runs" \
        -artifact_prefix="$out/" "$out/work/$h" "$root/tests/fuzz/corpus/$h" \
        >"$out/long/$h.log" 2>&1 || { echo "fuzz: $h failed, see $out/long/$h.log" >&2; exit 1; }
      grep -E '^stat::|DONE' "$out/long/$h.log" | tail -4
    done
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
