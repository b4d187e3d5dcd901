#!/usr/bin/env bash
# The README's "test" command (and what .ci/run calls): install, build, run
# every test through ctest, which ends with its pass/fail summary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --test
# SSM_BUILD_FUZZERS: the libFuzzer harnesses too (a clang++-14 sub-build),
# each fuzzed briefly by ctest (fuzz_* entries).
./scripts/build.sh -DSSM_BUILD_TESTS=ON -DSSM_BUILD_FUZZERS=ON
jobs=$(nproc 2>/dev/null || echo 2)
cd build
ctest --output-on-failure -j "$jobs"
