#!/usr/bin/env bash
# The README's "run" command: install, build, then run the main job. Until the
# gRPC server lands this is the core demo (HiPPO memories on a test signal);
# arguments are passed to it, e.g. ./scripts/run.sh --print=legs --n=4
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
exec ./build/tools/ssm_demo "$@"
