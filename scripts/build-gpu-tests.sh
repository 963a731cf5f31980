#!/usr/bin/env bash
# Builds the GPU tests as self-contained binaries (Abseil and GoogleTest linked statically; CUDA runtime and
# NCCL loaded from the GPU machine), into build-gpu/, for a machine that has CUDA but no Debian -dev packages.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build-gpu
mkdir -p "$out"
cuda=${CUDA_HOME:-/usr/local/cuda}
absl_libs=$(pkg-config --static --libs absl_status absl_statusor absl_strings)
g++ -std=c++20 -O2 -DGEMMA_HAVE_NCCL -I. -I"$cuda/include" \
  shard/nccl_collective_test.cc shard/nccl_collective.cc shard/collective.cc \
  -Wl,-Bstatic -lgtest_main -lgtest $absl_libs -Wl,-Bdynamic \
  -L"$cuda/lib64" -L"$cuda/lib" -lcudart -lnccl -lpthread \
  -o "$out/nccl_collective_test"
echo "built $out/nccl_collective_test"
