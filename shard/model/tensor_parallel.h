// Rank arithmetic of tensor parallelism: which heads, FFN columns and vocabulary rows one rank holds.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "shard/model/model_config.h"

namespace gemma {

// Megatron-style split: q/k/v and gate/up column-parallel, o and down
// row-parallel (then all-reduced), embedding and output projection
// vocab-parallel. KV heads are split when there are at least as many as ranks,
// else replicated (each rank keeps the one kv head its query heads use). With
// more ranks than query heads (Gemma 3 1B's 4 heads at TP 8), each head is
// replicated on world / heads ranks: all of them compute it, one adds its
// o-projection to the all-reduce, so the sum holds it once.
// Plain value type; thread-compatible.
struct TensorParallel {
  int rank = 0;
  int world = 1;
  int q_head_begin = 0, num_q_heads = 0;    // this rank's query heads
  int q_head_replicas = 1;                  // ranks holding the same query heads (world > heads)
  bool adds_attention_output = true;        // false on all but one replica of a query head
  int kv_head_begin = 0, num_kv_heads = 0;  // this rank's kv heads (global indices)
  int ffn_begin = 0, ffn_size = 0;          // this rank's slice of the FFN width
  int vocab_begin = 0, vocab_end = 0;       // this rank's rows of the vocabulary
  int vocab_slice = 0;                      // ceil(vocab / world): the padded slice every rank gathers

  // InvalidArgument when world neither divides nor is a multiple of the heads,
  // does not divide the FFN width, or when rank is outside [0, world).
  static absl::StatusOr<TensorParallel> Create(const ModelConfig& config, int rank, int world);
  std::string DebugString() const;
};

}  // namespace gemma
