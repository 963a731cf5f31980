#include "shard/model/model_weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "shard/model/dtype.h"
#include "shard/checkpoint/progress.h"

namespace gemma {
namespace {

float ElementAsF32(const StoredTensor& t, int64_t i) {
  const char* p = t.data;
  switch (t.dtype) {
    case DType::kBF16: {
      uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      return Bf16ToF32(b);
    }
    case DType::kF16: {
      uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      return F16ToF32(b);
    }
    default: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
  }
}

MatrixView Rows(const MatrixView& m, int64_t begin, int64_t count) {
  return {m.data + begin * m.stride, count, m.cols, m.stride};
}

MatrixView Cols(const MatrixView& m, int64_t begin, int64_t count) { return {m.data + begin, m.rows, count, m.stride}; }

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

}  // namespace

absl::StatusOr<MatrixView> ModelWeights::Matrix(const std::string& name, int64_t rows, int64_t cols) {
  ASSIGN_OR_RETURN(const StoredTensor t, checkpoint_->Get(name, {rows, cols}));
  if (t.dtype == DType::kBF16 && reinterpret_cast<uintptr_t>(t.data) % 2 == 0) {
    return MatrixView{reinterpret_cast<const uint16_t*>(t.data), rows, cols, cols};
  }
  auto owned = AllocateOwned(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) owned[i] = F32ToBf16(ElementAsF32(t, i));
  MatrixView view{owned.get(), rows, cols, cols};
  converted_.push_back(std::move(owned));
  return view;
}

ModelWeights::OwnedBuffer ModelWeights::AllocateOwned(int64_t elements) {
  // 2 MB pages: weights stream through every step, and small pages cost TLB
  // (and, under some hypervisors, shadow page table) misses on every pass.
  constexpr size_t kHuge = 2 << 20;
  const size_t bytes = (static_cast<size_t>(elements) * sizeof(uint16_t) + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, bytes);
  if (p == nullptr) throw std::bad_alloc();
  ::madvise(p, bytes, MADV_HUGEPAGE);
  return OwnedBuffer(static_cast<uint16_t*>(p));
}

MatrixView ModelWeights::OwnedCopy(const MatrixView& slice, const MatrixView& whole) {
  auto owned = AllocateOwned(slice.rows * slice.cols);
  for (int64_t r = 0; r < slice.rows; ++r) {
    std::memcpy(&owned[r * slice.cols], slice.data + r * slice.stride, slice.cols * sizeof(uint16_t));
  }
  // Drop this process's mapping of the whole matrix's pages (the page cache keeps them).
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(whole.data) + page - 1) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(whole.data + whole.rows * whole.stride) / page * page;
  if (end > begin && !IsOwned(whole)) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  MatrixView view{owned.get(), slice.rows, slice.cols, slice.cols};
  converted_.push_back(std::move(owned));
  return view;
}

bool ModelWeights::IsOwned(const MatrixView& m) const {
  for (const auto& c : converted_) {
    if (c.get() == m.data) return true;
  }
  return false;
}

absl::StatusOr<std::vector<float>> ModelWeights::NormPlusOne(const std::string& name, int64_t n) {
  ASSIGN_OR_RETURN(const StoredTensor t, checkpoint_->Get(name, {n}));
  std::vector<float> w(n);
  for (int64_t i = 0; i < n; ++i) w[i] = 1.0f + ElementAsF32(t, i);
  return w;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(std::shared_ptr<const Checkpoint> checkpoint) {
  ASSIGN_OR_RETURN(const TensorParallel tp, TensorParallel::Create(checkpoint->config(), 0, 1));
  return Load(std::move(checkpoint), tp);
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(std::shared_ptr<const Checkpoint> checkpoint,
                                                                const TensorParallel& tp) {
  auto w = std::unique_ptr<ModelWeights>(new ModelWeights());
  w->checkpoint_ = std::move(checkpoint);
  w->tp_ = tp;
  const ModelConfig& c = w->checkpoint_->config();
  const int64_t h = c.hidden_size, d = c.head_dim;
  const std::string m = TextTensorPrefix(*w->checkpoint_);
  ReportIgnoredTensors(*w->checkpoint_);
  ASSIGN_OR_RETURN(w->embed_, w->Matrix(m + "embed_tokens.weight", c.vocab_size, h));
  w->embed_ = Rows(w->embed_, tp.vocab_begin, tp.vocab_end - tp.vocab_begin);
  ASSIGN_OR_RETURN(w->final_norm_, w->NormPlusOne(m + "norm.weight", h));
  w->layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat(m, "layers.", i, ".");
    LayerWeights& l = w->layers_[i];
    ASSIGN_OR_RETURN(l.q, w->Matrix(p + "self_attn.q_proj.weight", c.q_dim(), h));
    ASSIGN_OR_RETURN(l.k, w->Matrix(p + "self_attn.k_proj.weight", c.kv_dim(), h));
    ASSIGN_OR_RETURN(l.v, w->Matrix(p + "self_attn.v_proj.weight", c.kv_dim(), h));
    ASSIGN_OR_RETURN(l.o, w->Matrix(p + "self_attn.o_proj.weight", h, c.q_dim()));
    ASSIGN_OR_RETURN(l.gate, w->Matrix(p + "mlp.gate_proj.weight", c.intermediate_size, h));
    ASSIGN_OR_RETURN(l.up, w->Matrix(p + "mlp.up_proj.weight", c.intermediate_size, h));
    ASSIGN_OR_RETURN(l.down, w->Matrix(p + "mlp.down_proj.weight", h, c.intermediate_size));
    l.q = Rows(l.q, tp.q_head_begin * d, tp.num_q_heads * d);
    l.k = Rows(l.k, tp.kv_head_begin * d, tp.num_kv_heads * d);
    l.v = Rows(l.v, tp.kv_head_begin * d, tp.num_kv_heads * d);
    if (tp.world > 1) {
      // Row-parallel slices are columns: every row holds a piece, so using them in
      // place would keep every page of the whole matrix resident on every rank.
      // A contiguous copy of the slice (and dropping the mapped pages) keeps a
      // rank's memory at its share.
      l.o = w->OwnedCopy(Cols(l.o, tp.q_head_begin * d, tp.num_q_heads * d), l.o);
      l.down = w->OwnedCopy(Cols(l.down, tp.ffn_begin, tp.ffn_size), l.down);
    }
    l.gate = Rows(l.gate, tp.ffn_begin, tp.ffn_size);
    l.up = Rows(l.up, tp.ffn_begin, tp.ffn_size);
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
  }
  // Fault the mapped pages in now, so the first request does not pay for it.
  std::vector<MatrixView> all = {w->embed_};
  for (const auto& l : w->layers_) all.insert(all.end(), {l.q, l.k, l.v, l.o, l.gate, l.up, l.down});
  const int64_t total = w->WeightBytesPerStep();
  Progress progress("loading " + w->checkpoint_->dir(), total);
  int64_t done = 0;
  volatile uint16_t sink = 0;
  for (const auto& m : all) {
    for (int64_t r = 0; r < m.rows; ++r) {
      for (int64_t i = 0; i < m.cols; i += 2048) sink = sink + m.data[r * m.stride + i];
    }
    done += m.rows * m.cols * 2;
    progress.Update(done);
  }
  progress.Finish();
  return w;
}

int64_t ModelWeights::WeightBytesPerStep() const {
  int64_t n = embed_.rows * embed_.cols;
  for (const auto& l : layers_) {
    for (const MatrixView* m : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) n += m->rows * m->cols;
  }
  return 2 * n;
}

}  // namespace gemma
