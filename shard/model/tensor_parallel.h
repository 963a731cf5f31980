// Rank arithmetic of tensor parallelism: which heads, FFN columns and vocabulary rows one rank holds.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "shard/model/model_config.h"

namespace gemma {

// Megatron-style split: q/k/v and gate/up column-parallel, o and down
// row-parallel (then all-reduced), embedding and output projection
// vocab-parallel. KV heads are split when there are at least as many as ranks,
// else replicated (each rank keeps the one kv head its query heads use).
// Plain value type; thread-compatible.
struct TensorParallel {
  int rank = 0;
  int world = 1;
  int q_head_begin = 0, num_q_heads = 0;    // this rank's query heads
  int kv_head_begin = 0, num_kv_heads = 0;  // this rank's kv heads (global indices)
  int ffn_begin = 0, ffn_size = 0;          // this rank's slice of the FFN width
  int vocab_begin = 0, vocab_end = 0;       // this rank's rows of the vocabulary
  int vocab_slice = 0;                      // ceil(vocab / world): the padded slice every rank gathers

  // InvalidArgument when world does not divide the heads or the FFN width, or
  // when rank is outside [0, world).
  static absl::StatusOr<TensorParallel> Create(const ModelConfig& config, int rank, int world);
  std::string DebugString() const;
};

}  // namespace gemma
