#!/usr/bin/env bash
# Streaming with TLS on vs off, measured in the same run (bench/README.md,
# "The service"): two local ssm_servers on free loopback ports, one in
# plaintext and one serving TLS (test certificates from
# tests/e2e/make_test_pki.sh in a temporary folder), and `ssm_client bench`
# against each in turn, alternating, so drifts of the machine hit both.
# Besides throughput and p99 it reports the CPU time each side spent per
# step (the server's from /proc, the client's from /usr/bin/time), which a
# busy machine disturbs less than the rates.
#
#   scripts/bench-tls.sh [--runs=5] [--token] [bench flags...]
#
# Default workload: 64 lock-step s4-demo streams of 1000 steps. --token
# adds a callers file to the TLS server and sends a token (per-call
# authentication on top of TLS). Prints each run's steps/s and p99, then
# the medians. Needs a build (scripts/build.sh) and /usr/bin/time. Stops its
# servers by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
with_token=false
bench=()
for arg in "$@"; do
  case $arg in
    --runs=*) runs=${arg#--runs=} ;;
    --token) with_token=true ;;
    *) bench+=("$arg") ;;
  esac
done
[[ ${#bench[@]} -gt 0 ]] || bench=(--mode=stream --model=s4-demo --concurrency=64 --steps=1000 --inflight=1)
server=build/server/ssm_server
client=build/client/ssm_client
[[ -x $server && -x $client ]] || { echo "bench-tls: build first (scripts/build.sh)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
tests/e2e/make_test_pki.sh "$work/pki" >/dev/null

free_port() {
  /usr/bin/python3 -c 'import sys; sys.path.insert(0, "bench"); import benchlib; print(benchlib.free_port())'
}
start() {  # name port flags...
  local name=$1 port=$2
  shift 2
  "$server" --address="127.0.0.1:$port" --model_repository=models --metrics_port=0 "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
}
plain_port=$(free_port)
tls_port=$(free_port)
health_port=$(free_port)
tls_flags=(--tls_cert="$work/pki/server.pem" --tls_key="$work/pki/server.key"
           --health_address="127.0.0.1:$health_port")
tls_client=(--ca="$work/pki/ca.pem")
if $with_token; then
  token=bench-token-$$
  printf '{"callers": [{"principal": "bench", "token_sha256": ["%s"], "scopes": ["run:*"]}]}\n' \
    "$(printf %s "$token" | sha256sum | cut -d' ' -f1)" >"$work/callers.json"
  tls_flags+=(--auth_callers="$work/callers.json")
  tls_client+=(--token="$token")
fi
start plain "$plain_port"
start tls "$tls_port" "${tls_flags[@]}"
for address in "127.0.0.1:$plain_port" "127.0.0.1:$health_port"; do
  for ((i = 0; i < 100; i++)); do
    "$client" --address="$address" --deadline=1s health >/dev/null 2>&1 && break
    sleep 0.2
  done
done

# CPU time (user + system) a process has used so far, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

one() {  # label server_pid client flags...: one run, "steps/s p99_ms server_us client_us"
  local label=$1 pid=$2 before after
  shift 2
  before=$(ticks "$pid")
  /usr/bin/time -f "%U %S" -o "$work/time" "$client" "$@" bench --json "${bench[@]}" \
    >"$work/report.json"
  after=$(ticks "$pid")
  /usr/bin/python3 - "$work/report.json" "$work/time" "$((after - before))" "$hz" <<'PY' |
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"] == 0, r
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
steps = r["steps"]
server_us = int(sys.argv[3]) / int(sys.argv[4]) / steps * 1e6
client_us = (user + system) / steps * 1e6
print("%.0f %.2f %.1f %.1f" % (r["steps_per_second"], r["latency_us"]["p99"] / 1000,
                               server_us, client_us))
PY
    tee -a "$work/$label.txt" | awk -v l="$label" \
      '{ printf "%-9s %6d steps/s  p99 %6.2f ms  server %5.1f us/step  client %5.1f us/step\n", l, $1, $2, $3, $4 }'
}
echo "bench ${bench[*]}, $runs runs each, alternating$($with_token && echo "; TLS with a token checked per call")"
for ((r = 0; r < runs; r++)); do
  one plaintext "${pids[0]}" --address="127.0.0.1:$plain_port"
  one tls "${pids[1]}" --address="127.0.0.1:$tls_port" "${tls_client[@]}"
done
median() {  # file column
  sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}
for label in plaintext tls; do
  f=$work/$label.txt
  echo "$label: median $(median "$f" 1) steps/s ($(sort -n "$f" | head -1 | cut -d' ' -f1)-$(
    sort -n "$f" | tail -1 | cut -d' ' -f1)), p99 $(median "$f" 2) ms," \
    "server $(median "$f" 3) us/step, client $(median "$f" 4) us/step (CPU)"
done
