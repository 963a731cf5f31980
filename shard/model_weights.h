// The model's weights as views into the memory-mapped checkpoint (bf16), with norms pre-added to 1 + w in f32.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/checkpoint.h"
#include "shard/cpu/matmul.h"
#include "shard/model_config.h"

namespace gemma {

struct LayerWeights {
  MatrixView q, k, v, o;    // [q_dim, hidden], [kv_dim, hidden] x2, [hidden, q_dim]
  MatrixView gate, up, down;  // [ffn, hidden] x2, [hidden, ffn]
  std::vector<float> attn_norm;  // 1 + input_layernorm.weight, [hidden]
  std::vector<float> ffn_norm;   // 1 + post_attention_layernorm.weight, [hidden]
};

// Immutable after Load; thread-safe for concurrent reads. Keeps the Checkpoint
// (and so the mappings) alive.
class ModelWeights {
 public:
  // Checks every tensor's name, dtype and shape against the config. BF16
  // tensors are used in place; F16/F32 ones are converted to bf16 (round to
  // nearest even) into owned memory. Shows progress on a terminal while pages
  // are read in.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(std::shared_ptr<const Checkpoint> checkpoint);

  const ModelConfig& config() const { return checkpoint_->config(); }
  const MatrixView& embed() const { return embed_; }  // [vocab, hidden], also the output projection
  const std::vector<float>& final_norm() const { return final_norm_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  // Bytes of bf16 weights one decode step reads (every matrix once, embedding as the output projection).
  int64_t WeightBytesPerStep() const;

 private:
  absl::StatusOr<MatrixView> Matrix(const std::string& name, int64_t rows, int64_t cols);
  absl::StatusOr<std::vector<float>> NormPlusOne(const std::string& name, int64_t n);

  std::shared_ptr<const Checkpoint> checkpoint_;
  MatrixView embed_;
  std::vector<float> final_norm_;
  std::vector<LayerWeights> layers_;
  std::vector<std::unique_ptr<uint16_t[]>> converted_;  // bf16 copies of F16/F32 tensors
};

}  // namespace gemma
