#!/usr/bin/env bash
# The README's "run" command: install what is missing, build the server and
# client, then run the main job: ssm_server on the shipped model repository
# (models/) at 127.0.0.1:50051, until Ctrl-C or SIGTERM (it drains, then
# exits 0). Arguments go to the server, e.g. ./scripts/run.sh --address=127.0.0.1:6000
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
exec ./build/server/ssm_server --model_repository=models "$@"
