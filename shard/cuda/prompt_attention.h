// Causal self-attention of a whole prompt through cuBLASLt's tensor-core products. When a sequence's step starts
// at position 0, every key it attends to is among this step's own qkv rows, so attention is three batched steps
// over the heads: scores S = Q K^T, a causal softmax, and P V. Queries go a chunk at a time: a chunk's keys end at
// its last query (skipping most of the causal square's masked half), and its scores fit a bounded scratch.
// Prompts that continue a cached context, and short ones, take the paged kernels instead.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "shard/cuda/gemm.h"
#include "shard/cuda/kernels.h"

namespace gemma::cuda {

// Shorter prompts gain nothing over the tiled kernel.
inline constexpr int kPromptAttentionMinTokens = 32;

struct PromptAttentionArgs {
  const void* qkv = nullptr;  // the step's [T, ld] rows of [q heads | k heads | v heads] in `in` (q scaled, q/k rotated)
  int64_t ld = 0;
  Dtype in = Dtype::kBf16;
  int first_token = 0, tokens = 0;  // the prompt's rows of the step; they hold positions 0..tokens-1
  int num_q = 0, num_kv = 0, head_dim = 0;
  int heads_per_kv = 1, q_head_begin = 0, kv_head_begin = 0;  // this rank's heads, as in AttentionArgs
  void* out = nullptr;  // [T, num_q * head_dim] of `out_type`
  Dtype out_type = Dtype::kBf16;
  void* scratch = nullptr;  // PromptAttentionScratchBytes(tokens, num_q, in) bytes
};

// Scratch for the scores and probabilities of one chunk of a prompt of `tokens` tokens.
size_t PromptAttentionScratchBytes(int tokens, int num_q, Dtype in);

absl::Status EnqueuePromptAttention(Gemm& gemm, const PromptAttentionArgs& a, cudaStream_t stream);

}  // namespace gemma::cuda
