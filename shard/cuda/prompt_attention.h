// Causal self-attention of a run of prompt tokens through cuBLASLt's tensor-core products: scores S = Q K^T, a
// causal softmax, and P V, each batched over the heads. Queries go a chunk at a time: a chunk's keys end at its
// last query (skipping most of the causal square's masked half), and its scores fit a bounded scratch. The keys
// and values are the step's own rows for a prompt that starts at position 0, or the sequence's cached rows
// gathered into one matrix for a chunk that continues a cached context. Decode and short runs take the paged
// kernels instead.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "shard/cuda/gemm.h"
#include "shard/cuda/kernels.h"

namespace gemma::cuda {

// Shorter runs gain nothing over the tiled kernel.
inline constexpr int kPromptAttentionMinTokens = 32;

struct PromptAttentionArgs {
  // The run's queries: row i (position start_pos + i), head h at q + i * q_ld + h * head_dim; scaled and rotated.
  const void* q = nullptr;
  int64_t q_ld = 0;
  // Keys and values of positions 0..start_pos+tokens-1: row j (position j), kv head g at k + j * kv_ld + g * head_dim.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t kv_ld = 0;
  Dtype in = Dtype::kBf16;  // of q, k and v
  int start_pos = 0, tokens = 0;
  int num_q = 0, head_dim = 0;
  int heads_per_kv = 1, q_head_begin = 0, kv_head_begin = 0;  // this rank's heads, as in AttentionArgs
  void* out = nullptr;  // row i, head h at out + i * out_ld + h * head_dim
  int64_t out_ld = 0;
  Dtype out_type = Dtype::kBf16;
  void* scratch = nullptr;  // PromptAttentionScratchBytes(start_pos + tokens, tokens, num_q, in) bytes
  int window = 0;           // as AttentionArgs::window
  float softcap = 0;        // as AttentionArgs::softcap
};

// Scratch for the scores and probabilities of one chunk of `queries` queries over at most `keys` keys.
size_t PromptAttentionScratchBytes(int keys, int queries, int num_q, Dtype in);
// The most PromptAttentionScratchBytes asks for any run of up to `queries` queries over up to `keys` keys.
size_t PromptAttentionMaxScratchBytes(int keys, int queries, int num_q, Dtype in);

absl::Status EnqueuePromptAttention(Gemm& gemm, const PromptAttentionArgs& a, cudaStream_t stream);

}  // namespace gemma::cuda
