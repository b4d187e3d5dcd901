#!/usr/bin/env bash
# Lints docker/Dockerfile (ctest docker_lint, label `container`):
#
#   docker/check-dockerfile.sh build/node_tools/bin/dockerfilelint
#
# 1. dockerfilelint (installed by deploy/tools/install-linters.sh) must find
#    no issue, with the rules of docker/.dockerfilelintrc.
# 2. What the image promises and a linter does not know: a non-root numeric
#    USER, exec-form ENTRYPOINT (so SIGTERM reaches ssm_server), the gRPC and
#    metrics ports exposed, a HEALTHCHECK through ssm-healthcheck (which
#    runs `ssm_client health`), and debian:bookworm-slim as the default base.
# 3. Self-test: the same checks must reject broken copies of the file, so a
#    linter that stopped reporting would fail here instead of passing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
linter=${1:?usage: check-dockerfile.sh PATH_TO_DOCKERFILELINT}
[[ -x $linter ]] || { echo "check-dockerfile: $linter is not executable" >&2; exit 1; }

# Prints what is wrong with the Dockerfile in folder $1; returns 1 if any.
check() {
  local dir=$1 file=$1/Dockerfile bad=0 out
  if ! out=$("$linter" "$file" 2>&1); then
    echo "$out"
    echo "check-dockerfile: dockerfilelint reports issues in $file"
    bad=1
  fi
  expect() {  # expect DESCRIPTION EXTENDED_REGEX
    if ! grep -Eq "$2" "$file"; then
      echo "check-dockerfile: $file: no $1 (/$2/)"
      bad=1
    fi
  }
  expect "non-root numeric USER" '^USER [1-9][0-9]*(:[0-9]+)?$'
  expect "exec-form ENTRYPOINT of ssm_server" '^ENTRYPOINT \["[^"]*/ssm_server"'
  expect "EXPOSE of 50051 and 9464" '^EXPOSE .*50051/tcp.*9464/tcp'
  expect "HEALTHCHECK through ssm-healthcheck" '^ +CMD \["/opt/ssmserve/bin/ssm-healthcheck"\]'
  expect "ssm-healthcheck copied into the image" '^COPY docker/healthcheck\.sh /opt/ssmserve/bin/ssm-healthcheck$'
  if ! grep -Eq '^exec /opt/ssmserve/bin/ssm_client .*health$' "$here/healthcheck.sh"; then
    echo "check-dockerfile: $here/healthcheck.sh does not end in ssm_client health"
    bad=1
  fi
  expect "default base debian:bookworm-slim" '^ARG BASE_IMAGE=debian:bookworm-slim$'
  expect "build stage using the project's install script" '^RUN \./scripts/install-deps\.sh'
  return $bad
}

check "$here"
echo "check-dockerfile: docker/Dockerfile passes dockerfilelint and the image checks"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
breaks=(
  's/^USER .*/USER root/'                                  # runs as root
  's/^ENTRYPOINT \["([^"]*)",/ENTRYPOINT \1 /'             # shell form
  '/^HEALTHCHECK/,/ssm-healthcheck"\]$/d'                  # no health check
  's/^EXPOSE .*/EXPOSE 50051\/tcp/'                        # metrics port hidden
  's/^(RUN apt-get update -qq) \\$/\1/'                    # update alone (lint)
  's/^COPY --from=build/copy --from=build/'                # lower case (lint)
)
for expr in "${breaks[@]}"; do
  mkdir -p "$tmp/case"
  cp "$here/.dockerfilelintrc" "$tmp/case/"
  sed -E "$expr" "$here/Dockerfile" >"$tmp/case/Dockerfile"
  if cmp -s "$here/Dockerfile" "$tmp/case/Dockerfile"; then
    echo "check-dockerfile: self-test edit '$expr' changed nothing" >&2
    exit 1
  fi
  if check "$tmp/case" >/dev/null; then
    echo "check-dockerfile: self-test: a Dockerfile edited by '$expr' passed" >&2
    exit 1
  fi
done
echo "check-dockerfile: self-test: all ${#breaks[@]} broken copies rejected"
