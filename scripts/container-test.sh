#!/usr/bin/env bash
# Builds docker/Dockerfile with podman and smoke-tests the image with the
# real client (ctest `container_smoke`; also runs on its own):
#
#   ./scripts/container-test.sh [--client=build/client/ssm_client] [--keep]
#
# No Docker engine and no registry here: the base image is made from
# Debian's archive with mmdebstrap and imported into podman once (kept as
# localhost/ssmserve-base:bookworm and reused by later runs), then passed as
# the Dockerfile's BASE_IMAGE. Then, against the image on 127.0.0.1:
#   health SERVING (client) and the image's own HEALTHCHECK (podman
#   healthcheck run); the process runs as UID 65532 and cannot write the
#   models; settings from the environment (FLAGS_<name>) reach the server
#   and arguments override them;
#   one Infer and one stream of the same input agree; /metrics answers; a
#   repository mounted read-only over /opt/ssmserve/models replaces the
#   baked-in one;
#   once more with TLS and a token (certificates by tests/e2e/make_test_pki.sh
#   in a temporary folder mounted read-only, --health_address for the
#   HEALTHCHECK): the image's HEALTHCHECK passes on the health port, a call
#   without the token is UNAUTHENTICATED, one with it works, plaintext to
#   the TLS port gets nothing;
#   SIGTERM during a stream: the stream completes and the container exits 0.
# Exit 0 only if all of that held. --keep leaves the image and the logs.
set -euo pipefail
# (Under pipefail, `producer | grep -q` fails at random: grep -q exits at the
# first match and the producer dies of SIGPIPE. The greps here read all.)
cd "$(dirname "$0")/.."
root=$PWD

client=$root/build/client/ssm_client
keep=false
for arg in "$@"; do
  case $arg in
    --client=*) client=${arg#--client=} ;;
    --keep) keep=true ;;
    *) echo "container-test: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

./scripts/install-deps.sh --container
if [[ ! -x $client ]]; then
  ./scripts/build.sh >/dev/null
  client=$root/build/client/ssm_client
fi

# podman on this kind of machine needs runc and raised limits (README).
podman_opts=(--runtime runc)
limits=(--ulimit nofile=20000:20000 --ulimit nproc=1000:1000)
base=${SSM_BASE_IMAGE:-localhost/ssmserve-base:bookworm}
image=localhost/ssmserve:test
name=ssmserve-smoke-$$
work=$(mktemp -d)
log() { echo "container-test: $*"; }
fail() {
  echo "container-test: FAILED: $*" >&2
  podman logs "$name" >"$work/server.log" 2>&1 || true
  echo "--- server log (last 30 lines) ---" >&2
  tail -30 "$work/server.log" >&2 || true
  exit 1
}
cleanup() {
  podman "${podman_opts[@]}" rm -f -t 0 "$name" "$name-vol" "$name-tls" >/dev/null 2>&1 || true
  if $keep; then log "kept $image and $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# Waits up to 30 s until container $1 answers health SERVING to the client
# command that follows; fails the test if it exits or never does.
wait_serving() {
  local container=$1 i
  shift
  for ((i = 0; i < 60; i++)); do
    "$@" health >/dev/null 2>&1 && return 0
    [[ $(podman inspect --format '{{.State.Running}}' "$container") == true ]] ||
      fail "container $container exited before serving"
    sleep 0.5
  done
  fail "container $container is not SERVING after 30 s"
}

t0=$SECONDS
if ! podman image exists "$base"; then
  log "making the base image $base from Debian's archive (mmdebstrap)"
  # Like debian:bookworm-slim: apt, no documentation or locales.
  mmdebstrap --variant=apt --components=main --quiet \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/base.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$work/base.tar" "$base" >/dev/null
  rm -f "$work/base.tar"
fi
log "base image $base ready ($((SECONDS - t0)) s)"

t0=$SECONDS
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
podman build "${podman_opts[@]}" "${limits[@]}" --format docker --layers \
  --build-arg BASE_IMAGE="$base" -f docker/Dockerfile -t "$image" . \
  >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; fail "podman build"; }
log "built $image in $((SECONDS - t0)) s ($(podman image inspect --format '{{.Size}}' "$image" |
  awk '{printf "%.0f MB", $1 / 1e6}'))"

# Random free host ports on 127.0.0.1 only; the image's defaults inside.
podman run "${podman_opts[@]}" "${limits[@]}" -d --name "$name" \
  -p 127.0.0.1::50051 -p 127.0.0.1::9464 \
  -e FLAGS_drain_timeout=15s -e FLAGS_threads=1 \
  "$image" --max_sessions=64 --threads=2 >/dev/null 2>"$work/run.err" ||
  { cat "$work/run.err" >&2; fail "podman run"; }
# (Without systemd, podman also prints that it cannot schedule the
# HEALTHCHECK timer; `podman healthcheck run` below runs the check itself.)
grpc=$(podman port "$name" 50051/tcp)
metrics=$(podman port "$name" 9464/tcp)
log "container $name: gRPC on $grpc, metrics on $metrics"
ssm=("$client" --address="$grpc" --deadline=10s)

wait_serving "$name" "${ssm[@]}"
"${ssm[@]}" health | grep SERVING >/dev/null || fail "health is not SERVING"
log "health SERVING"
podman healthcheck run "$name" >/dev/null || fail "the image's HEALTHCHECK failed"
log "image HEALTHCHECK (ssm-healthcheck: ssm_client health inside) passes"

[[ $(podman exec "$name" id -u) == 65532 ]] || fail "the server does not run as UID 65532"
if podman exec "$name" touch /opt/ssmserve/models/probe 2>/dev/null; then
  fail "the model repository is writable by the server's user"
fi
# Precedence: the argument --threads=2 beats FLAGS_threads=1; the
# environment's FLAGS_drain_timeout=15s beats the default (checked at the
# SIGTERM below).
podman logs "$name" 2>&1 | grep ", 2 workers," >/dev/null ||
  fail "--threads=2 (argument) did not override FLAGS_threads=1 (environment)"
log "runs as UID 65532, models read-only; arguments override FLAGS_<name>, which override defaults"

"${ssm[@]}" models | grep s4-demo >/dev/null || fail "models does not list s4-demo"
seq 0 299 | awk '{printf "%.6f\n", sin($1 / 7) + 0.5 * cos($1 / 3)}' >"$work/x.csv"
"${ssm[@]}" infer --model=s4-demo --input="$work/x.csv" --output="$work/infer.csv" ||
  fail "Infer"
"${ssm[@]}" stream --model=s4-demo --input="$work/x.csv" --chunk=7 --output="$work/stream.csv" ||
  fail "StreamInfer"
rows=$(wc -l <"$work/infer.csv")
[[ $rows -ge 300 ]] || fail "Infer returned $rows rows for 300 steps"
# Two CSV outputs agree to float32 printing (DESIGN.md: ≤ 1e-9 in double).
agree() {
  paste -d, "$1" "$2" | awk -F, '
    { n = NF / 2; for (i = 1; i <= n; i++) { d = $i - $(i + n); if (d < 0) d = -d;
        if (d > 1e-5 * (1 + ($i < 0 ? -$i : $i))) { print "row " NR ": " $0; bad = 1; exit } } }
    END { exit bad }'
}
# Streaming and Infer agree.
agree "$work/infer.csv" "$work/stream.csv" || fail "stream outputs differ from Infer's"
log "Infer and a stream in chunks of 7 agree on 300 steps"

/usr/bin/python3 - "$metrics" <<'PY' || fail "/metrics"
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
assert "ssm_" in body and "StreamInfer" in body, body[:500]
PY
log "/metrics answers"

# A repository mounted over the baked-in one (read-only) replaces it.
mkdir -p "$work/repo"
cp -r models/legt-delay "$work/repo/"
chmod -R a+rX "$work/repo"
podman run "${podman_opts[@]}" "${limits[@]}" -d --name "$name-vol" \
  -p 127.0.0.1::50051 -v "$work/repo:/opt/ssmserve/models:ro" \
  "$image" >/dev/null 2>"$work/run-vol.err" ||
  { cat "$work/run-vol.err" >&2; fail "podman run with a mounted repository"; }
vol=("$client" --address="$(podman port "$name-vol" 50051/tcp)" --deadline=10s)
wait_serving "$name-vol" "${vol[@]}"
served=$("${vol[@]}" models 2>&1) || served="(models failed) $served"
podman "${podman_opts[@]}" rm -f -t 0 "$name-vol" >/dev/null 2>&1 || true
grep -q legt-delay <<<"$served" && ! grep -q s4-demo <<<"$served" ||
  fail "a mounted repository did not replace the baked-in one: $served"
log "a repository mounted over /opt/ssmserve/models replaces the baked-in one"

# The HEALTHCHECK reads FLAGS_health_address: pointed at a port where
# nothing listens, it must fail (so it does look there).
if podman exec -e FLAGS_health_address=0.0.0.0:1 "$name" /opt/ssmserve/bin/ssm-healthcheck \
  >/dev/null 2>&1; then
  fail "the HEALTHCHECK ignored FLAGS_health_address"
fi

# TLS and a token: the test PKI mounted read-only (keys readable by the
# server's UID), a callers file knowing one token, the health port for the
# HEALTHCHECK given as an argument.
pki=$work/pki
tests/e2e/make_test_pki.sh "$pki" >/dev/null
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '{"callers": [{"principal": "smoke", "token_sha256": ["%s"], "scopes": ["run:*", "list"]}]}\n' \
  "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$pki/callers.json"
chmod -R a+rX "$pki"
podman run "${podman_opts[@]}" "${limits[@]}" -d --name "$name-tls" \
  -p 127.0.0.1::50051 -p 127.0.0.1::50052 -v "$pki:/etc/ssmserve/tls:ro" \
  "$image" --tls_cert=/etc/ssmserve/tls/server.pem --tls_key=/etc/ssmserve/tls/server.key \
  --auth_callers=/etc/ssmserve/tls/callers.json --health_address=0.0.0.0:50052 \
  >/dev/null 2>"$work/run-tls.err" || { cat "$work/run-tls.err" >&2; fail "podman run with TLS"; }
# (The certificate names 127.0.0.1, which is where podman publishes.)
tls=("$client" --address="$(podman port "$name-tls" 50051/tcp)" --ca="$pki/ca.pem" --deadline=10s)
wait_serving "$name-tls" "$client" --address="$(podman port "$name-tls" 50052/tcp)" --deadline=10s
podman healthcheck run "$name-tls" >/dev/null ||
  fail "the image's HEALTHCHECK failed on a TLS server with --health_address"
refused=$(env -u SSM_TOKEN "${tls[@]}" models 2>&1) &&
  fail "a call without the token was served: $refused"
grep -q "^error: UNAUTHENTICATED: " <<<"$refused" ||
  fail "a call without the token was not refused with UNAUTHENTICATED: $refused"
served=$(SSM_TOKEN=$token "${tls[@]}" models 2>&1) || fail "a call with the token failed: $served"
grep -q s4-demo <<<"$served" || fail "models with the token does not list s4-demo: $served"
SSM_TOKEN=$token "${tls[@]}" infer --model=s4-demo --input="$work/x.csv" --output="$work/tls.csv" ||
  fail "Infer over TLS with the token"
[[ $(wc -l <"$work/tls.csv") -ge 300 ]] || fail "Infer over TLS returned too few rows"
agree "$work/tls.csv" "$work/infer.csv" || fail "Infer over TLS differs from plaintext Infer"
if SSM_TOKEN=$token "$client" --address="$(podman port "$name-tls" 50051/tcp)" --deadline=3s \
  models >/dev/null 2>&1; then
  fail "plaintext to the TLS port was served"
fi
podman logs "$name-tls" 2>&1 | grep "(gRPC, TLS)" >/dev/null || fail "the server log does not say TLS"
podman "${podman_opts[@]}" rm -f -t 0 "$name-tls" >/dev/null 2>&1 || true
log "TLS + token: HEALTHCHECK on the health port, no token UNAUTHENTICATED, token served, plaintext refused"

# SIGTERM with a stream running: it must complete (drain), then exit 0.
# 20000 lock-step steps take several seconds, well inside the drain.
steps=20000
seq 0 $((steps - 1)) | awk '{printf "%.6f\n", sin($1 / 11)}' >"$work/long.csv"
"${ssm[@]}" --deadline=60s stream --model=legt-delay --input="$work/long.csv" --chunk=1 \
  --output="$work/long_out.csv" 2>"$work/long_err.txt" &
stream_pid=$!
for ((i = 0; i < 100; i++)); do
  podman logs "$name" 2>&1 | grep "opened: model 'legt-delay'" >/dev/null && break
  sleep 0.1
done
sleep 0.3
podman kill --signal TERM "$name" >/dev/null
stream_rc=0
wait "$stream_pid" || stream_rc=$?
exit_code=$(podman wait "$name")
podman logs "$name" >"$work/server.log" 2>&1
[[ $stream_rc == 0 ]] || fail "the stream running at SIGTERM failed: $(cat "$work/long_err.txt")"
[[ $(wc -l <"$work/long_out.csv") -ge $steps ]] || fail "the stream running at SIGTERM lost steps"
grep -q "received SIGTERM: draining for up to 15s" "$work/server.log" ||
  fail "no drain (or FLAGS_drain_timeout=15s not applied) in the server log"
[[ $exit_code == 0 ]] || fail "the container exited with $exit_code after SIGTERM"
grep -q "drained in" "$work/server.log" || fail "the server log shows no completed drain"
log "SIGTERM mid-stream: the stream completed all $steps steps, the container exited 0"
log "PASSED"
