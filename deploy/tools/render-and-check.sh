#!/usr/bin/env bash
# Renders one kustomization with the installed kustomize and checks the
# result (check_rendered.py), then checks that the checker catches a list of
# breaks of it (--self-test). What ctest's deploy_kustomize_* tests run:
#
#   deploy/tools/render-and-check.sh TOOLS_DIR deploy/overlays/example \
#       [check_rendered.py options...]
#
# TOOLS_DIR is where install-linters.sh put kustomize; the rendering is kept
# in TOOLS_DIR/rendered/ to look at.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools=${1:?usage: render-and-check.sh TOOLS_DIR KUSTOMIZATION_DIR [check options]}
target=${2:?usage: render-and-check.sh TOOLS_DIR KUSTOMIZATION_DIR [check options]}
shift 2
kustomize="$tools/bin/kustomize"
if [[ ! -x $kustomize ]]; then
  echo "render-and-check: no kustomize in $tools (run deploy/tools/install-linters.sh $tools)" >&2
  exit 1
fi
mkdir -p "$tools/rendered"
out="$tools/rendered/$(echo "${target%/}" | sed 's|.*deploy/||; s|/|_|g').yaml"
"$kustomize" build "$target" >"$out"
/usr/bin/python3 "$here/check_rendered.py" "$out" "$@"
/usr/bin/python3 "$here/check_rendered.py" --self-test "$out" "$@"
