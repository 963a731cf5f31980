// The model's weights: views into the memory-mapped checkpoint (bf16) or quantized copies of them, with norms
// pre-added to 1 + w in f32.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/huge_pages.h"
#include "shard/model/matrix_view.h"
#include "shard/model/model_config.h"
#include "shard/model/quantize.h"
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

// Where the text model's tensors sit in `checkpoint` ("model.", or a multimodal layout's prefix as saved).
std::string TextTensorPrefix(const Checkpoint& checkpoint);

// The refusal of a NaN or an infinity (`nan` says which) at `place` ("r, c", or an index) of tensor `name`.
absl::Status NonFiniteWeight(const std::string& name, bool nan, const std::string& place);

struct WeightLoadOptions {
  // A pre-quantized checkpoint (GPTQ, AWQ, compressed-tensors FP8) loads as stored, at bf16 or its own precision.
  WeightPrecision precision = WeightPrecision::kBF16;
  // int4: columns per group (32, 64 or 128), smaller powers of two down to 32 where a matrix's input is not a
  // multiple of it; a tensor-parallel slice that would cut a group is refused (naming the group size that fits), so
  // a model is quantized alike at every degree. 0: 128, or the largest that also fits this degree's slices (a
  // matrix may then be grouped differently at another degree).
  int int4_group_size = 0;
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
  // With a quantized precision, each rank's slices are quantized as they are read (see quantize.h) and the
  // mapped bf16 pages are let go.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(std::shared_ptr<const Checkpoint> checkpoint,
                                                            const TensorParallel& tp,
                                                            const WeightLoadOptions& options = {});
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Load(std::shared_ptr<const Checkpoint> checkpoint);
  // The same model with every matrix dequantized to f32: what the quantized kernels are checked against.
  std::unique_ptr<ModelWeights> Dequantized() const;

  const ModelConfig& config() const { return checkpoint_->config(); }
  const TensorParallel& tp() const { return tp_; }
  // Rows [tp.vocab_begin, tp.vocab_end) of the embedding, also the output projection.
  const MatrixView& embed() const { return embed_; }
  const std::vector<float>& final_norm() const { return final_norm_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }
  // Bytes of weights one decode step reads on this rank (every matrix once, embedding as the output projection),
  // in their stored formats.
  int64_t WeightBytesPerStep() const;
  WeightFormat matrix_format() const { return layers_.empty() ? embed_.format : layers_[0].q.format; }

 private:
  absl::StatusOr<MatrixView> Matrix(const std::string& name, int64_t rows, int64_t cols);
  absl::StatusOr<std::vector<float>> NormPlusOne(const std::string& name, int64_t n);
  // This rank's part of `whole`, rows [row_begin, +rows) and columns [col_begin, +cols), in `format`: the mapped
  // memory itself where it can be (bf16 rows), otherwise an owned copy (a bf16 column slice, whose rows are
  // scattered over every page of the whole) or quantized one; then the whole's pages are let go.
  absl::StatusOr<MatrixView> Place(const std::string& name, const MatrixView& whole, int64_t row_begin, int64_t rows,
                                   int64_t col_begin, int64_t cols, WeightFormat format, int preferred_group);
  // Drops this process's use of `whole`'s memory: the mapped pages (the page cache keeps them) or an owned copy.
  void Release(const MatrixView& whole);
  // Whether `m` starts at one of the buffers this object owns (not mapped file pages).
  bool IsOwned(const MatrixView& m) const;

  std::shared_ptr<const Checkpoint> checkpoint_;
  TensorParallel tp_;
  MatrixView embed_;
  std::vector<float> final_norm_;
  std::vector<LayerWeights> layers_;
  // Copies this object owns (F16/F32 tensors as bf16, row-parallel slices, quantized and dequantized matrices),
  // on huge pages.
  uint8_t* Own(int64_t bytes);
  std::vector<HugePageBuffer> owned_;
};

}  // namespace gemma
