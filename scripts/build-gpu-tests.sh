#!/usr/bin/env bash
# Builds what the GPU check runs, here, for a GPU machine that has CUDA but no Debian -dev packages: the CUDA
# backend's tests, the NCCL test and gemma-cuda-bench (shard/ only: no gRPC), and the serving binaries
# (gemma-worker with libgemma_cuda.so, gemma-router, gemma) for an end-to-end check, into build-gpu/, with the
# non-system shared libraries they load copied into build-gpu/lib (CUDA, cuBLAS and NCCL come from that machine).
# The tests and the bench hold Hopper code only (sm_90a, no PTX: half the bytes to copy); GEMMA_CUDA_PTX=ON keeps
# the compute_80 PTX for other GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-gpu-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DGEMMA_BUILD_SERVICES=OFF -DGEMMA_CUDA_PTX=${GEMMA_CUDA_PTX:-OFF} >/dev/null
cmake --build build-gpu-cmake --target cuda_backend_test cuda_memory_test decode_gemm_test nccl_collective_test \
  backend_conformance_test cuda_lora_test cuda_quantized_test activations_test gemma-cuda-bench
out=build-gpu
rm -rf "$out"
mkdir -p "$out/lib"
cp build-gpu-cmake/shard/cuda/cuda_backend_test build-gpu-cmake/shard/cuda/cuda_memory_test \
   build-gpu-cmake/shard/cuda/decode_gemm_test build-gpu-cmake/shard/collective/nccl_collective_test \
   build-gpu-cmake/shard/conformance/backend_conformance_test build-gpu-cmake/shard/cuda/cuda_lora_test build-gpu-cmake/shard/cuda/cuda_quantized_test \
   build-gpu-cmake/shard/conformance/activations_test build-gpu-cmake/shard/cuda/gemma-cuda-bench "$out/"
bash scripts/build.sh >/dev/null
mkdir -p "$out/bin"
cp build/worker/gemma-worker build/router/gemma-router build/tools/gemma build/shard/cuda/libgemma_cuda.so \
   build/tokenizer/libgemma_sentencepiece.so "$out/bin/"
# Libraries from this machine's packages; not the C runtime, the C++ runtime or CUDA's own.
for bin in "$out"/*_test "$out"/gemma-cuda-bench "$out"/bin/*; do
  ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u | grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas[^/]*|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
du -sh "$out" | cut -f1 | xargs echo "built $out:"
