#!/usr/bin/env bash
# Builds and runs the ssm_bench benchmarks. Arguments go to Google Benchmark,
# e.g. ./scripts/bench.sh --benchmark_filter=MemoryUpdate
# The README's figures: ./scripts/bench.sh --benchmark_repetitions=5 \
#   --benchmark_report_aggregates_only=true
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh -DSSM_BUILD_BENCHMARKS=ON
exec ./build/bench/ssm_bench "$@"
