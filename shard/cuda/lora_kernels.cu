// The LoRA shrink and expand kernels (lora_kernels.h). Written for clarity first: one warp per row of A in the
// shrink, one thread per output column in the expand, f32 accumulation, no atomics (a row's result does not depend
// on what else the step holds, nor on the run).
#include <cuda_bf16.h>

#include "shard/cuda/lora_kernels.h"

namespace gemma::cuda {
namespace {

constexpr int kShrinkWarps = 8;       // rows of A per shrink block
constexpr int kExpandThreads = 256;   // output columns per expand block
constexpr int64_t kSplitMinInputs = 1024;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block (chunk, row group, split); warp w takes row j = blockIdx.y * kShrinkWarps + w of A and the input columns
// [blockIdx.z * split_len, +split_len). Lane l reads columns l, l + 32, ...: A's row and each token's x row are read
// in consecutive 128-byte runs. The chunk's tokens are summed side by side, so A is read once for all of them.
template <typename In>
__global__ void LoraShrink(const In* x, int64_t ldx, int64_t in, int64_t split_len, LoraStepLayout layout,
                           const LoraDeviceEntry* entries, int64_t slot_stride, float* partial, int64_t split_stride) {
  const int chunk = blockIdx.x;
  if (chunk >= *layout.num_chunks) return;
  const LoraDeviceEntry e = entries[layout.chunk_slot[chunk] * slot_stride];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j = blockIdx.y * kShrinkWarps + warp;
  if (j >= e.rank) return;  // also rank 0: this adapter does not adapt the projection
  const int first = layout.chunk_first[chunk], count = layout.chunk_count[chunk];
  // Tokens past `count` repeat the last one, so every load stays inside x; their sums are dropped.
  const In* rows[kLoraChunkTokens];
#pragma unroll
  for (int c = 0; c < kLoraChunkTokens; ++c) {
    rows[c] = x + static_cast<int64_t>(layout.tokens[first + min(c, count - 1)]) * ldx;
  }
  const int64_t begin = blockIdx.z * split_len, end = min(in, begin + split_len);
  const float* a = e.a + static_cast<int64_t>(j) * in;
  float acc[kLoraChunkTokens] = {};
  for (int64_t i = begin + lane; i < end; i += 32) {
    const float av = a[i];
#pragma unroll
    for (int c = 0; c < kLoraChunkTokens; ++c) acc[c] += av * ToFloat(rows[c][i]);
  }
#pragma unroll
  for (int c = 0; c < kLoraChunkTokens; ++c) acc[c] = WarpSum(acc[c]);
  if (lane != 0) return;
  float* out = partial + blockIdx.z * split_stride;
  for (int c = 0; c < count; ++c) out[static_cast<int64_t>(first + c) * kLoraMaxRank + j] = acc[c];
}

// Block (chunk, column group): the chunk's shrunk rows (splits added in order, times scaling) go to shared memory;
// thread o then forms each token's sum over j of s[c][j] * B^T[j, o] and adds it to that token's output.
__global__ void LoraExpand(const float* partial, int splits, int64_t split_stride, LoraStepLayout layout,
                           const LoraDeviceEntry* entries, int64_t slot_stride, float* out, int64_t ldo,
                           int64_t out_dim) {
  const int chunk = blockIdx.x;
  if (chunk >= *layout.num_chunks) return;  // the whole block alike, before any barrier
  const LoraDeviceEntry e = entries[layout.chunk_slot[chunk] * slot_stride];
  if (e.rank == 0) return;
  const int first = layout.chunk_first[chunk], count = layout.chunk_count[chunk];
  __shared__ float s[kLoraChunkTokens][kLoraMaxRank];
  for (int i = threadIdx.x; i < kLoraChunkTokens * kLoraMaxRank; i += blockDim.x) {
    const int c = i / kLoraMaxRank, j = i % kLoraMaxRank;
    float v = 0.0f;
    if (c < count && j < e.rank) {
      const int64_t at = static_cast<int64_t>(first + c) * kLoraMaxRank + j;
      for (int z = 0; z < splits; ++z) v += partial[z * split_stride + at];
      v *= e.scaling;
    }
    s[c][j] = v;
  }
  __syncthreads();
  const int64_t o = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (o >= out_dim) return;
  float acc[kLoraChunkTokens] = {};
  for (int j = 0; j < e.rank; ++j) {
    const float b = e.bt[static_cast<int64_t>(j) * out_dim + o];
#pragma unroll
    for (int c = 0; c < kLoraChunkTokens; ++c) acc[c] += s[c][j] * b;
  }
  for (int c = 0; c < count; ++c) out[static_cast<int64_t>(layout.tokens[first + c]) * ldo + o] += acc[c];
}

}  // namespace

int LoraSplits(int64_t in) {
  const int64_t splits = (in + kSplitMinInputs - 1) / kSplitMinInputs;
  return static_cast<int>(splits < 1 ? 1 : (splits > kLoraMaxSplits ? kLoraMaxSplits : splits));
}

cudaError_t LaunchLoraShrink(const void* x, int64_t ldx, int64_t in, Dtype x_type, const LoraStepLayout& layout,
                             const LoraDeviceEntry* entries, int64_t slot_stride, int max_chunks, int max_rank,
                             float* partial, int64_t split_stride, cudaStream_t stream) {
  if (max_chunks <= 0) return cudaSuccess;
  if (max_rank < 1 || max_rank > kLoraMaxRank || in < 1) return cudaErrorInvalidValue;
  const int splits = LoraSplits(in);
  const int64_t split_len = (in + splits - 1) / splits;
  const dim3 grid(max_chunks, (max_rank + kShrinkWarps - 1) / kShrinkWarps, splits);
  if (x_type == Dtype::kF32) {
    LoraShrink<<<grid, kShrinkWarps * 32, 0, stream>>>(static_cast<const float*>(x), ldx, in, split_len, layout,
                                                       entries, slot_stride, partial, split_stride);
  } else {
    LoraShrink<<<grid, kShrinkWarps * 32, 0, stream>>>(static_cast<const __nv_bfloat16*>(x), ldx, in, split_len,
                                                       layout, entries, slot_stride, partial, split_stride);
  }
  return cudaGetLastError();
}

cudaError_t LaunchLoraExpand(const float* partial, int splits, int64_t split_stride, const LoraStepLayout& layout,
                             const LoraDeviceEntry* entries, int64_t slot_stride, int max_chunks, float* out,
                             int64_t ldo, int64_t out_dim, cudaStream_t stream) {
  if (max_chunks <= 0) return cudaSuccess;
  if (splits < 1 || splits > kLoraMaxSplits || out_dim < 1) return cudaErrorInvalidValue;
  const dim3 grid(max_chunks, static_cast<unsigned>((out_dim + kExpandThreads - 1) / kExpandThreads));
  LoraExpand<<<grid, kExpandThreads, 0, stream>>>(partial, splits, split_stride, layout, entries, slot_stride, out, ldo,
                                                  out_dim);
  return cudaGetLastError();
}

}  // namespace gemma::cuda
