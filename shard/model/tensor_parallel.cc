#include "shard/model/tensor_parallel.h"

#include "absl/strings/str_cat.h"

namespace gemma {

absl::StatusOr<TensorParallel> TensorParallel::Create(const ModelConfig& c, int rank, int world) {
  if (world < 1) return absl::InvalidArgumentError(absl::StrCat("tensor-parallel degree ", world, " must be >= 1"));
  if (rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside [0, ", world, ") for world size ", world));
  }
  if (c.num_heads % world != 0 && world % c.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel degree ", world, " does not divide the ", c.num_heads,
                                                   " attention heads, nor is it a multiple of them; allowed: a divisor "
                                                   "or a multiple of ", c.num_heads));
  }
  if (c.intermediate_size % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel degree ", world, " does not divide the FFN width ",
                                                   c.intermediate_size));
  }
  if (c.num_kv_heads % world != 0 && world % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel degree ", world, " and the ", c.num_kv_heads,
                                                   " kv heads must divide one another"));
  }
  TensorParallel tp;
  tp.rank = rank;
  tp.world = world;
  if (world > c.num_heads) {
    tp.q_head_replicas = world / c.num_heads;
    tp.num_q_heads = 1;
    tp.q_head_begin = rank / tp.q_head_replicas;
    tp.adds_attention_output = rank % tp.q_head_replicas == 0;
  } else {
    tp.num_q_heads = c.num_heads / world;
    tp.q_head_begin = rank * tp.num_q_heads;
  }
  if (c.num_kv_heads >= world) {
    tp.num_kv_heads = c.num_kv_heads / world;
    tp.kv_head_begin = rank * tp.num_kv_heads;
  } else {  // replicated: the kv head of this rank's first query head serves all of them
    tp.num_kv_heads = 1;
    tp.kv_head_begin = tp.q_head_begin / c.heads_per_kv();
  }
  tp.ffn_size = c.intermediate_size / world;
  tp.ffn_begin = rank * tp.ffn_size;
  tp.vocab_slice = (c.vocab_size + world - 1) / world;
  tp.vocab_begin = std::min(c.vocab_size, rank * tp.vocab_slice);
  tp.vocab_end = std::min(c.vocab_size, (rank + 1) * tp.vocab_slice);
  return tp;
}

std::string TensorParallel::DebugString() const {
  return absl::StrCat("rank ", rank, "/", world, ": q heads [", q_head_begin, ", ", q_head_begin + num_q_heads,
                      "), kv heads [", kv_head_begin, ", ", kv_head_begin + num_kv_heads, "), ffn [", ffn_begin, ", ",
                      ffn_begin + ffn_size, "), vocab [", vocab_begin, ", ", vocab_end, ")");
}

}  // namespace gemma
