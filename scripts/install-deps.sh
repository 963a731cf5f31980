#!/usr/bin/env bash
# Installs the Debian 12 packages gemma-serve builds and tests with; safe to run again.
set -euo pipefail
packages=(
  build-essential openssl libssl-dev cmake ninja-build pkg-config git
  libabsl-dev libhwy-dev nlohmann-json3-dev libsentencepiece-dev
  libgrpc++-dev protobuf-compiler-grpc prometheus-cpp-dev libgloo-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev python3-grpcio
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing: ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
