// The decode GEMM of batches too large for one warp per output (kernels::SmallBatchGemm) and too small for
// cuBLASLt to stream the weights at full bandwidth: c[m, n] = sum_k a[m, k] * w[n, k] for up to kDecodeMmaMaxRows
// rows of bf16 activations, on the tensor cores (mma m16n8k16), each weight read once. The K range may be split
// over several blocks (more blocks in flight when N is small); their partial sums are added in split order by the
// last block to finish, so a row's result depends on the shape only, never on the other rows or the timing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "shard/cuda/decode_gemm_splits.h"

namespace gemma::cuda {

// Device scratch for split sums: partials of at most `partial_floats` floats, one arrival counter per block column
// (zero between launches: the last block of a column resets it).
struct DecodeMmaWorkspace {
  float* partials = nullptr;
  int64_t partial_floats = 0;
  unsigned* counters = nullptr;
  int counter_count = 0;
};

// Whether the kernel takes this product: bf16, 1..kDecodeMmaMaxRows rows, K a multiple of kDecodeMmaChunk, 16-byte
// aligned rows, and room in the workspace for its split sums.
bool DecodeMmaFits(const void* a, const void* w, int64_t ldw, int M, int64_t N, int64_t K, int splits,
                   const DecodeMmaWorkspace& ws);

// a: [M, K] bf16 (rows K apart); w: [N, K] bf16 (rows ldw apart); c: [M, N] f32 (rows ldc apart).
// cudaErrorInvalidValue when DecodeMmaFits says no.
cudaError_t LaunchDecodeMmaGemm(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int M, int N, int K,
                                int splits, const DecodeMmaWorkspace& ws, cudaStream_t stream);

}  // namespace gemma::cuda
