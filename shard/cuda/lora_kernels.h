// LoRA terms on the GPU, per row and unmerged (SGMV, as in Punica and S-LoRA): for the step's tokens of each
// adapter, out += scaling * (x A^T) B^T in two kernels, a shrink to rank r and an expand back. Rows of no adapter
// are never read or written. Plain C++ launchers over device pointers; each returns the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "shard/cuda/kernels.h"

namespace gemma::cuda {

inline constexpr int kLoraMaxRank = 64;     // the loader's bound (kMaxLoraRank)
inline constexpr int kLoraChunkTokens = 8;  // tokens of one adapter that one block takes (A and B read once for them)
inline constexpr int kLoraMaxSplits = 16;   // the shrink's split of its input dimension, at most

// One adapted projection of one resident adapter. rank 0: this adapter leaves the projection alone.
struct LoraDeviceEntry {
  const float* a;   // [rank, in]: this rank's slice, as the loader made it
  const float* bt;  // [rank, out]: B transposed, so that the expand's threads read consecutive outputs
  int32_t rank;
  float scaling;
};

// A step's tokens with adapters, in chunks of at most kLoraChunkTokens tokens of one adapter (device arrays). The
// chunk count is read on the device, so a decode graph serves any mix of adapters of its batch size.
struct LoraStepLayout {
  const int32_t* num_chunks;   // [1]
  const int32_t* chunk_slot;   // [chunks]: the adapter's slot (its row of the entry table)
  const int32_t* chunk_first;  // [chunks]: its first entry in `tokens`
  const int32_t* chunk_count;  // [chunks]: 1..kLoraChunkTokens
  const int32_t* tokens;       // step token indices, chunk after chunk
};

// How many parts the shrink splits an input dimension into (each block sums one; the expand adds them in order).
int LoraSplits(int64_t in);

// partial[split][k][j] (split_stride floats per split, kLoraMaxRank per token) = sum over split's part of the input
// of x[tokens[k], i] * A[j, i], for every chunk's tokens k and j < its adapter's rank. entries: this projection's
// entry of slot 0; slot s's is s * slot_stride further. Blocks: max_chunks x ceil(max_rank / 16) x LoraSplits(in);
// those past the step's chunks or the adapter's rank return at once.
cudaError_t LaunchLoraShrink(const void* x, int64_t ldx, int64_t in, Dtype x_type, const LoraStepLayout& layout,
                             const LoraDeviceEntry* entries, int64_t slot_stride, int max_chunks, int max_rank,
                             float* partial, int64_t split_stride, cudaStream_t stream);

// out[tokens[k], o] += scaling * sum_j (sum over splits of partial[split][k][j]) * B[o, j], for o < out_dim: each
// output element is written by one thread, in the same order whatever the batch.
cudaError_t LaunchLoraExpand(const float* partial, int splits, int64_t split_stride, const LoraStepLayout& layout,
                             const LoraDeviceEntry* entries, int64_t slot_stride, int max_chunks, float* out,
                             int64_t ldo, int64_t out_dim, cudaStream_t stream);

}  // namespace gemma::cuda
