#include "shard/model/model_weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "shard/model/dtype.h"
#include "shard/checkpoint/progress.h"
#include "shard/model/fp8_checkpoint.h"
#include "shard/model/packed_int4.h"

namespace gemma {
namespace {

}  // namespace

// The multimodal layout as published (transformers 4.50) puts the text model under "language_model.model."; a
// checkpoint saved again by transformers 4.52 or later names it "model.language_model." (the class's own
// _checkpoint_conversion_mapping maps one to the other). Both load; the published name is expected otherwise.
std::string TextTensorPrefix(const Checkpoint& checkpoint) {
  const std::string& prefix = checkpoint.config().tensor_prefix;
  constexpr char kPublished[] = "language_model.model.", kResaved[] = "model.language_model.";
  if (prefix != kPublished) return prefix;
  const auto names = checkpoint.TensorNames();
  auto has_embedding = [&](const std::string& p) {
    return std::find(names.begin(), names.end(), p + "embed_tokens.weight") != names.end();
  };
  return !has_embedding(kPublished) && has_embedding(kResaved) ? kResaved : prefix;
}

absl::Status NonFiniteWeight(const std::string& name, bool nan, const std::string& place) {
  return absl::InvalidArgumentError(absl::StrCat(name, " holds ", nan ? "NaN" : "an infinity", " at [", place,
                                                 "]: the checkpoint is damaged, or was saved after an overflow"));
}

namespace {

// A multimodal checkpoint holds a vision tower and projector this server never runs: say so once, at load.
void ReportIgnoredTensors(const Checkpoint& checkpoint) {
  const auto& prefixes = checkpoint.config().ignored_tensor_prefixes;
  if (prefixes.empty()) return;
  int ignored = 0;
  for (const std::string& name : checkpoint.TensorNames()) {
    for (const std::string& p : prefixes) ignored += name.starts_with(p) || name.starts_with("model." + p) ? 1 : 0;
  }
  if (ignored == 0) return;
  std::fprintf(stderr,
               "%s: multimodal Gemma 3 checkpoint: serving the text model only; ignoring %d tensors of the vision "
               "tower and projector (%s)\n",
               checkpoint.dir().c_str(), ignored, absl::StrJoin(prefixes, ", ").c_str());
}

// A tensor of a layer past the config's count means a config and weights of different models: loading the layers
// the config names would serve a model cut short, silently.
absl::Status CheckNoLayerPastTheConfig(const Checkpoint& checkpoint, const std::string& prefix, int num_layers) {
  const std::string layers = prefix + "layers.";
  for (const std::string& name : checkpoint.TensorNames()) {
    if (!name.starts_with(layers)) continue;
    const std::string_view rest = std::string_view(name).substr(layers.size());
    int layer = 0;
    const auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), layer);
    if (error == std::errc() && end != rest.data() && layer >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint.dir(), ": tensor ", name, " is of layer ", layer, ", but config.json's num_hidden_layers is ",
          num_layers, " (layers 0..", num_layers - 1, "): are the config and the weights of one model?"));
    }
  }
  return absl::OkStatus();
}

// A NaN or an infinity among the weights makes every logit it reaches NaN, and generation goes on silently
// (token 0, log-probs null): refused at load, by place. Reads what this rank keeps of a bf16 matrix.
absl::Status CheckFinite(const std::string& name, const MatrixView& whole, int64_t row_begin, int64_t rows,
                         int64_t col_begin, int64_t cols) {
  auto non_finite = [](uint16_t bf16) { return (bf16 & 0x7F80) == 0x7F80; };
  for (int64_t r = row_begin; r < row_begin + rows; ++r) {
    const uint16_t* row = whole.data + r * whole.stride + col_begin;
    // Four values a word: an all-ones exponent, plus 0x80, carries into its lane's top bit and no further (a warm
    // 2B load takes 0.6 s more, where a value-by-value test added 1.4 s).
    uint64_t any = 0;
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      uint64_t word;
      std::memcpy(&word, row + c, 8);
      any |= ((word & 0x7F807F807F807F80ull) + 0x0080008000800080ull) & 0x8000800080008000ull;
    }
    for (; c < cols; ++c) any |= non_finite(row[c]) ? 1 : 0;
    if (any == 0) continue;
    c = std::find_if(row, row + cols, non_finite) - row;
    return NonFiniteWeight(name, (row[c] & 0x7F) != 0, absl::StrCat(r, ", ", col_begin + c));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MatrixView> ModelWeights::Matrix(const std::string& name, int64_t rows, int64_t cols) {
  ASSIGN_OR_RETURN(const StoredTensor t, checkpoint_->Get(name, {rows, cols}));
  if (t.dtype == DType::kBF16 && reinterpret_cast<uintptr_t>(t.data) % 2 == 0) {
    return MatrixView{reinterpret_cast<const uint16_t*>(t.data), rows, cols, cols};
  }
  auto* owned = reinterpret_cast<uint16_t*>(Own(rows * cols * 2));
  for (int64_t i = 0; i < rows * cols; ++i) owned[i] = F32ToBf16(FloatElementAsF32(t.dtype, t.data, i));
  return MatrixView{owned, rows, cols, cols};
}

uint8_t* ModelWeights::Own(int64_t bytes) {
  owned_.push_back(AllocateHugePages(bytes));
  return owned_.back().get();
}

absl::StatusOr<MatrixView> ModelWeights::Place(const std::string& name, const MatrixView& whole, int64_t row_begin,
                                               int64_t rows, int64_t col_begin, int64_t cols, WeightFormat format,
                                               int preferred_group) {
  RETURN_IF_ERROR(CheckFinite(name, whole, row_begin, rows, col_begin, cols));
  const bool whole_rows = col_begin == 0 && cols == whole.cols;
  if (format == WeightFormat::kBF16) {
    MatrixView slice = RowSlice(whole, row_begin, rows);
    if (whole_rows) return slice;
    ASSIGN_OR_RETURN(slice, ColSlice(slice, col_begin, cols, name.c_str()));
    // Row-parallel slices are columns: every row holds a piece, so using them in
    // place would keep every page of the whole matrix resident on every rank.
    // A contiguous copy of the slice keeps a rank's memory at its share.
    auto* owned = reinterpret_cast<uint16_t*>(Own(rows * cols * 2));
    for (int64_t r = 0; r < rows; ++r) std::memcpy(&owned[r * cols], slice.data + r * slice.stride, cols * 2);
    Release(whole);
    return MatrixView{owned, rows, cols, cols};
  }
  int group = 0;
  if (format == WeightFormat::kInt4) {
    // With a size asked for, chosen from the whole matrix alone, so every tensor-parallel degree quantizes the
    // model the same way; with none, the largest that fits this degree's slice too (every rank's slices are alike,
    // so the ranks agree).
    group = preferred_group > 0 ? PickGroupSize(whole.cols, preferred_group, {})
                                : PickGroupSize(whole.cols, 128, {col_begin, cols});
    if (group == 0) {
      const bool slice_is_why = preferred_group == 0 && whole.cols % 32 == 0;
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": int4 weights need groups of 32 to ", preferred_group > 0 ? preferred_group : 128,
          " input columns, and its ", slice_is_why ? "tensor-parallel slice's " : "",
          slice_is_why ? cols : whole.cols, " input columns are not a multiple of 32"));
    }
    if (col_begin % group != 0 || (cols % group != 0 && col_begin + cols != whole.cols)) {
      const int fits = PickGroupSize(whole.cols, group, {col_begin, cols});
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": this rank's tensor-parallel slice, input columns [", col_begin, ", ", col_begin + cols,
          "), cuts its int4 groups of ", group, " columns",
          fits > 0 ? absl::StrCat("; an int4 group size of ", fits, " fits this degree")
                   : "; no group size of 32 or more fits this degree"));
    }
  }
  const MatrixView q = QuantizeInto(whole, row_begin, rows, col_begin, cols, format, group,
                                    Own(QuantizedBytes(format, rows, cols, group)));
  Release(whole);
  return q;
}

void ModelWeights::Release(const MatrixView& whole) {
  if (IsOwned(whole)) {
    std::erase_if(owned_, [&](const HugePageBuffer& b) { return b.get() == reinterpret_cast<const uint8_t*>(whole.data); });
    return;
  }
  // Drop this process's mapping of the whole matrix's pages (the page cache keeps them).
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(whole.data) + page - 1) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(whole.data + whole.rows * whole.stride) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

bool ModelWeights::IsOwned(const MatrixView& m) const {
  const void* start = m.data != nullptr ? static_cast<const void*>(m.data)
                      : m.f32 != nullptr ? static_cast<const void*>(m.f32)
                                         : static_cast<const void*>(m.codes);
  for (const auto& b : owned_) {
    if (b.get() == start) return true;
  }
  return false;
}

absl::StatusOr<std::vector<float>> ModelWeights::NormPlusOne(const std::string& name, int64_t n) {
  ASSIGN_OR_RETURN(const StoredTensor t, checkpoint_->Get(name, {n}));
  std::vector<float> w(n);
  for (int64_t i = 0; i < n; ++i) {
    const float v = FloatElementAsF32(t.dtype, t.data, i);
    if (!std::isfinite(v)) return NonFiniteWeight(name, std::isnan(v), absl::StrCat(i));
    w[i] = 1.0f + v;
  }
  return w;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(std::shared_ptr<const Checkpoint> checkpoint) {
  ASSIGN_OR_RETURN(const TensorParallel tp, TensorParallel::Create(checkpoint->config(), 0, 1));
  return Load(std::move(checkpoint), tp);
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(std::shared_ptr<const Checkpoint> checkpoint,
                                                                const TensorParallel& tp,
                                                                const WeightLoadOptions& options) {
  WeightFormat format = WeightFormat::kBF16;
  switch (options.precision) {
    case WeightPrecision::kBF16:
      break;
    case WeightPrecision::kInt8:
      format = WeightFormat::kInt8;
      break;
    case WeightPrecision::kInt4:
      format = WeightFormat::kInt4;
      break;
    case WeightPrecision::kFp8:
      format = WeightFormat::kFp8;
      break;
  }
  if (format == WeightFormat::kInt4) {
    RETURN_IF_ERROR(ValidateInt4GroupSize(options.int4_group_size, /*zero_chooses=*/true, "int4 group size"));
  }
  const CheckpointQuantization& stored = checkpoint->config().quantization;
  const bool packed = stored.method == CheckpointQuantization::Method::kGptq ||
                      stored.method == CheckpointQuantization::Method::kAwq;
  const bool stored_fp8 = stored.method == CheckpointQuantization::Method::kFp8;
  const WeightFormat stored_format = packed ? WeightFormat::kInt4 : WeightFormat::kFp8;
  if ((packed || stored_fp8) && format != WeightFormat::kBF16 && format != stored_format) {
    return absl::InvalidArgumentError(absl::StrCat(
        checkpoint->dir(), " holds ", QuantizationMethodName(stored.method), " weights, which load as they are; weights ",
        WeightPrecisionName(options.precision), " would quantize them again: leave weights at bf16 (or ",
        WeightFormatName(stored_format), ")"));
  }
  // Tensors a pre-quantized checkpoint stores plainly (the embedding, modules its config ignores) load as stored.
  if (packed || stored_fp8) format = WeightFormat::kBF16;
  // int4 keeps the embedding / LM head at int8: it is the one matrix every logit reads.
  const WeightFormat embed_format = format == WeightFormat::kInt4 ? WeightFormat::kInt8 : format;
  auto w = std::unique_ptr<ModelWeights>(new ModelWeights());
  w->checkpoint_ = std::move(checkpoint);
  w->tp_ = tp;
  const ModelConfig& c = w->checkpoint_->config();
  const int64_t h = c.hidden_size, d = c.head_dim;
  const std::string m = TextTensorPrefix(*w->checkpoint_);
  ReportIgnoredTensors(*w->checkpoint_);
  RETURN_IF_ERROR(CheckNoLayerPastTheConfig(*w->checkpoint_, m, c.num_layers));
  const int group = options.int4_group_size;
  // Reading (and quantizing) every matrix is the long part of a load.
  const int64_t total = c.num_layers + 1;
  const std::string as = packed || stored_fp8 ? absl::StrCat(" (", QuantizationMethodName(stored.method), ")")
                         : format == WeightFormat::kBF16 ? ""
                                                         : absl::StrCat(" as ", WeightFormatName(format));
  Progress progress(absl::StrCat("loading ", w->checkpoint_->dir(), as), total);
  const std::string embed_name = m + "embed_tokens.weight";
  ASSIGN_OR_RETURN(const MatrixView embed, w->Matrix(embed_name, c.vocab_size, h));
  ASSIGN_OR_RETURN(w->embed_, w->Place(embed_name, embed, tp.vocab_begin, tp.vocab_end - tp.vocab_begin, 0, h,
                                       embed_format, group));
  // Fault the mapped pages used in place in now, so the first request does not pay for it.
  auto fault_in = [&w](const MatrixView& v) {
    if (v.format != WeightFormat::kBF16 || w->IsOwned(v)) return;
    volatile uint16_t sink = 0;
    for (int64_t r = 0; r < v.rows; ++r) {
      for (int64_t k = 0; k < v.cols; k += 2048) sink = sink + v.data[r * v.stride + k];
    }
  };
  fault_in(w->embed_);
  ASSIGN_OR_RETURN(w->final_norm_, w->NormPlusOne(m + "norm.weight", h));
  w->layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    progress.Update(i + 1);
    const std::string p = absl::StrCat(m, "layers.", i, ".");
    LayerWeights& l = w->layers_[i];
    // name, destination, whole shape, this rank's rows and columns.
    struct Part {
      std::string name;
      MatrixView* out;
      int64_t rows, cols, row_begin, row_count, col_begin, col_count;
    };
    const Part parts[] = {
        {"self_attn.q_proj", &l.q, c.q_dim(), h, tp.q_head_begin * d, tp.num_q_heads * d, 0, h},
        {"self_attn.k_proj", &l.k, c.kv_dim(), h, tp.kv_head_begin * d, tp.num_kv_heads * d, 0, h},
        {"self_attn.v_proj", &l.v, c.kv_dim(), h, tp.kv_head_begin * d, tp.num_kv_heads * d, 0, h},
        {"self_attn.o_proj", &l.o, h, c.q_dim(), 0, h, tp.q_head_begin * d, tp.num_q_heads * d},
        {"mlp.gate_proj", &l.gate, c.intermediate_size, h, tp.ffn_begin, tp.ffn_size, 0, h},
        {"mlp.up_proj", &l.up, c.intermediate_size, h, tp.ffn_begin, tp.ffn_size, 0, h},
        {"mlp.down_proj", &l.down, h, c.intermediate_size, 0, h, tp.ffn_begin, tp.ffn_size},
    };
    for (const Part& part : parts) {
      if (stored_fp8 && IsFp8Module(*w->checkpoint_, p + part.name)) {
        ASSIGN_OR_RETURN(*part.out, ReadFp8(*w->checkpoint_, p + part.name, part.rows, part.cols, part.row_begin,
                                            part.row_count, part.col_begin, part.col_count,
                                            [&w](int64_t bytes) { return w->Own(bytes); }));
        continue;
      }
      if (packed) {
        ASSIGN_OR_RETURN(*part.out, ReadPackedInt4(*w->checkpoint_, p + part.name, part.rows, part.cols,
                                                   part.row_begin, part.row_count, part.col_begin, part.col_count,
                                                   [&w](int64_t bytes) { return w->Own(bytes); }));
        continue;
      }
      const std::string name = p + part.name + ".weight";
      ASSIGN_OR_RETURN(const MatrixView whole, w->Matrix(name, part.rows, part.cols));
      ASSIGN_OR_RETURN(*part.out, w->Place(name, whole, part.row_begin, part.row_count, part.col_begin,
                                           part.col_count, format, group));
    }
    ASSIGN_OR_RETURN(l.attn_norm, w->NormPlusOne(p + "input_layernorm.weight", h));
    if (c.sandwich_norms()) {
      ASSIGN_OR_RETURN(l.post_attn_norm, w->NormPlusOne(p + "post_attention_layernorm.weight", h));
      ASSIGN_OR_RETURN(l.ffn_norm, w->NormPlusOne(p + "pre_feedforward_layernorm.weight", h));
      ASSIGN_OR_RETURN(l.post_ffn_norm, w->NormPlusOne(p + "post_feedforward_layernorm.weight", h));
    } else {
      ASSIGN_OR_RETURN(l.ffn_norm, w->NormPlusOne(p + "post_attention_layernorm.weight", h));
    }
    if (c.qk_norm()) {
      ASSIGN_OR_RETURN(l.q_norm, w->NormPlusOne(p + "self_attn.q_norm.weight", d));
      ASSIGN_OR_RETURN(l.k_norm, w->NormPlusOne(p + "self_attn.k_norm.weight", d));
    }
    for (const MatrixView* v : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) fault_in(*v);
  }
  progress.Update(total);
  progress.Finish();
  return w;
}

std::unique_ptr<ModelWeights> ModelWeights::Dequantized() const {
  auto w = std::unique_ptr<ModelWeights>(new ModelWeights());
  w->checkpoint_ = checkpoint_;
  w->tp_ = tp_;
  w->final_norm_ = final_norm_;
  w->layers_ = layers_;
  auto dequantize = [&](const MatrixView& m) {
    return DequantizeInto(m, reinterpret_cast<float*>(w->Own(m.rows * m.cols * 4)));
  };
  w->embed_ = dequantize(embed_);
  for (LayerWeights& l : w->layers_) {
    for (MatrixView* v : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) *v = dequantize(*v);
  }
  return w;
}

int64_t ModelWeights::WeightBytesPerStep() const {
  int64_t n = StoredBytes(embed_);
  for (const auto& l : layers_) {
    for (const MatrixView* m : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) n += StoredBytes(*m);
  }
  return n;
}

}  // namespace gemma
