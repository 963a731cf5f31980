#!/usr/bin/env bash
# Installs the Debian 12 packages gemma-serve needs; safe to run again.
#   install-deps.sh            build, test and deployment-check tools (the README and CI)
#   install-deps.sh --build    what building needs (the image's build stage)
#   install-deps.sh --runtime  the shared libraries the binaries load (the image's runtime stage)
#   install-deps.sh --print    installs nothing: prints the default set's package names, one a line, including
#                              those installed only when their command is missing (scripts/check_install_deps.py)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---all}
build=(
  build-essential openssl libssl-dev cmake ninja-build pkg-config git ca-certificates
  libabsl-dev libhwy-dev nlohmann-json3-dev libsentencepiece-dev libevent-dev
  libprotobuf-dev libgrpc++-dev protobuf-compiler-grpc prometheus-cpp-dev libgloo-dev
)
tests=(
  libgtest-dev libgmock-dev libbenchmark-dev clang libclang-rt-14-dev python3-grpcio
  prometheus  # promtool, and a real Prometheus for the monitoring test
)
# kubectl renders the Kubernetes overlays: Debian's kubernetes-client unless a kubectl is installed already;
# likewise node and npm. Each entry is command=package.
unless_present=(kubectl=kubernetes-client node=nodejs npm=npm)
runtime=(
  ca-certificates libabsl20220623 libgloo0 libgomp1 libgrpc++1.51 libhwy1 libprometheus-cpp-core1.0
  libprometheus-cpp-pull1.0 libprotobuf32 libsentencepiece0 libssl3
  libevent-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7
)
case "$mode" in
  --build) packages=("${build[@]}") ;;
  --runtime) packages=("${runtime[@]}") ;;
  --all)
    packages=("${build[@]}" "${tests[@]}")
    for entry in "${unless_present[@]}"; do
      command -v "${entry%%=*}" >/dev/null || packages+=("${entry#*=}")
    done
    ;;
  --print) printf '%s\n' "${build[@]}" "${tests[@]}" "${unless_present[@]#*=}"; exit 0 ;;
  *) echo "usage: install-deps.sh [--build|--runtime|--print]" >&2; exit 2 ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [[ $mode == --all && ! -d deploy/validate/node_modules ]]; then
  # The Kubernetes schema validator (kubernetes-models), pinned by package-lock.json.
  npm ci --prefix deploy/validate --no-audit --no-fund --loglevel=error
fi
if [[ $mode == --all && ! -d tests/openai_sdk/node_modules ]]; then
  # The official OpenAI Node SDK the HTTP API is tested with, pinned by package-lock.json.
  npm ci --prefix tests/openai_sdk --no-audit --no-fund --loglevel=error
fi
