// The model's weights as views into the memory-mapped checkpoint (bf16), with norms pre-added to 1 + w in f32.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/matrix_view.h"
#include "shard/model/model_config.h"
#include "shard/model/tensor_parallel.h"

namespace gemma {

// Shapes are this rank's slices (the whole model at world size 1).
struct LayerWeights {
  MatrixView q, k, v, o;      // [local q heads * head_dim, hidden], [local kv * head_dim, hidden] x2, [hidden, local q]
  MatrixView gate, up, down;  // [local ffn, hidden] x2, [hidden, local ffn]
  std::vector<float> attn_norm;  // 1 + input_layernorm.weight, [hidden]
  // Before the MLP: 1 + post_attention_layernorm.weight in Gemma 1, 1 + pre_feedforward_layernorm.weight in
  // Gemma 2 and 3 (where post_attention_layernorm normalizes the attention output instead). [hidden]
  std::vector<float> ffn_norm;
  // Gemma 2 and 3's sandwich: on the attention and MLP outputs before the residual add; empty in Gemma 1. [hidden]
  std::vector<float> post_attn_norm, post_ffn_norm;
  // Gemma 3's QK-norm, on each head's q and k before RoPE; empty otherwise. [head_dim]
  std::vector<float> q_norm, k_norm;
};

// Immutable after Load; thread-safe for concurrent reads. Keeps the Checkpoint
// (and so the mappings) alive.
class ModelWeights {
 public:
  // Checks every tensor's name, dtype and shape against the config. BF16
  // tensors are used in place; F16/F32 ones are converted to bf16 (round to
  // nearest even) into owned memory. Shows progress on a terminal while pages
  // are read in.
  // With `tp`, keeps (and reads in) only this rank's slices.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(std::shared_ptr<const Checkpoint> checkpoint,
                                                            const TensorParallel& tp);
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(std::shared_ptr<const Checkpoint> checkpoint);

  const ModelConfig& config() const { return checkpoint_->config(); }
  const TensorParallel& tp() const { return tp_; }
  // Rows [tp.vocab_begin, tp.vocab_end) of the embedding, also the output projection.
  const MatrixView& embed() const { return embed_; }
  const std::vector<float>& final_norm() const { return final_norm_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  // Bytes of bf16 weights one decode step reads on this rank (every matrix once, embedding as the output projection).
  int64_t WeightBytesPerStep() const;

 private:
  absl::StatusOr<MatrixView> Matrix(const std::string& name, int64_t rows, int64_t cols);
  absl::StatusOr<std::vector<float>> NormPlusOne(const std::string& name, int64_t n);
  // A contiguous owned copy of `slice` (part of `whole`); releases the mapped pages of `whole`.
  MatrixView OwnedCopy(const MatrixView& slice, const MatrixView& whole);
  // Whether `m` is one of the copies this object owns (not mapped file pages).
  bool IsOwned(const MatrixView& m) const;

  std::shared_ptr<const Checkpoint> checkpoint_;
  TensorParallel tp_;
  MatrixView embed_;
  std::vector<float> final_norm_;
  std::vector<LayerWeights> layers_;
  struct FreeDeleter {
    void operator()(uint16_t* p) const { std::free(p); }
  };
  using OwnedBuffer = std::unique_ptr<uint16_t[], FreeDeleter>;
  // bf16 copies this object owns (F16/F32 tensors, row-parallel slices), on huge pages.
  static OwnedBuffer AllocateOwned(int64_t elements);
  std::vector<OwnedBuffer> converted_;
};

}  // namespace gemma
