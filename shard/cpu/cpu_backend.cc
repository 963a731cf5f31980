#include "shard/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/status_macros.h"
#include "shard/cpu/lora.h"
#include "shard/cpu/matmul.h"
#include "shard/cpu/matmul_bf16.h"
#include "shard/cpu/matmul_int8.h"
#include "shard/cpu/ops.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

// Rotates one head in place with half-split pairing: (x[i], x[i + d/2]) by angle pos * inv_freq[i].
void ApplyRope(float* x, const float* cos_sin, int head_dim) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
    const float x0 = x[i], x1 = x[i + half];
    x[i] = x0 * c - x1 * s;
    x[i + half] = x0 * s + x1 * c;
  }
}

// Vocab-parallel logits: `gathered` holds every rank's padded slice ([world][rows][slice]); writes them in vocabulary
// order into out ([rows][vocab]).
void PlaceVocabSlices(const float* gathered, int world, int64_t rows, int64_t slice, int64_t vocab, float* out) {
  for (int r = 0; r < world; ++r) {
    const int64_t begin = std::min<int64_t>(vocab, r * slice);
    const int64_t count = std::min<int64_t>(vocab, (r + 1) * slice) - begin;
    for (int64_t row = 0; row < rows; ++row) {
      std::copy_n(gathered + (static_cast<int64_t>(r) * rows + row) * slice, count, out + row * vocab + begin);
    }
  }
}

}  // namespace

absl::StatusOr<MatMulActivations> ParseMatMulActivations(absl::string_view name) {
  if (name == "f32") return MatMulActivations::kF32;
  if (name == "bf16") return MatMulActivations::kBf16;
  if (name == "int8") return MatMulActivations::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("activations \"", name, "\" is invalid; allowed: ", kMatMulActivationsNames));
}

MatMulActivations ActivationsThatRun(MatMulActivations requested, std::string* why) {
  std::string reason;
  if (requested == MatMulActivations::kBf16 && !HasBf16DotProducts()) {
    reason = "activations bf16: this CPU has no AVX512-BF16 (with VBMI); the f32 kernel runs";
  } else if (requested == MatMulActivations::kBf16 && !Bf16DotProductsPayOff()) {
    // Rounding x buys nothing where the dot products are slow: the exact kernel runs prompts and batches faster.
    reason = absl::StrFormat(
        "activations bf16: vdpbf16ps multiply-adds at %.2fx the f32 rate on this CPU (worth it from %.2fx); the f32 "
        "kernel runs, exact",
        Bf16DotProductSpeedup(), kBf16DotProductsWorthIt);
  } else if (requested == MatMulActivations::kInt8 && !HasInt8DotProducts()) {
    reason = "activations int8: this CPU has no AVX512-VNNI; the f32 kernel runs";
  }
  if (reason.empty()) return requested;
  if (why != nullptr) *why = std::move(reason);
  return MatMulActivations::kF32;
}

absl::Status CheckMatMulActivations(MatMulActivations activations, WeightFormat weights) {
  if (activations == MatMulActivations::kBf16 && weights != WeightFormat::kBF16 && weights != WeightFormat::kFp8) {
    return absl::InvalidArgumentError(
        absl::StrCat("activations bf16 multiplies bf16 or fp8 weights: it needs weights bf16 or fp8, not ",
                     WeightFormatName(weights),
                     weights == WeightFormat::kInt8 || weights == WeightFormat::kInt4
                         ? "; use activations f32 or int8 with them"
                         : "; use activations f32 with them"));
  }
  if (activations == MatMulActivations::kInt8 && weights != WeightFormat::kInt8 && weights != WeightFormat::kInt4) {
    return absl::InvalidArgumentError(
        absl::StrCat("activations int8 multiplies int8 or 4-bit weights (W8A8, W4A8): it needs weights int8 or "
                     "int4, not ", WeightFormatName(weights),
                     weights == WeightFormat::kBF16 || weights == WeightFormat::kFp8
                         ? "; use activations f32 or bf16 with them"
                         : "; use activations f32 with them"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CpuBackend>> CpuBackend::Create(std::shared_ptr<const ModelWeights> weights,
                                                               const KvCacheOptions& kv_options,
                                                               std::shared_ptr<HostCollective> collective,
                                                               CpuComputeOptions compute) {
  if (collective == nullptr) collective = MakeSingleRankCollective();
  const TensorParallel& tp = weights->tp();
  RETURN_IF_ERROR(CheckCollectiveRank(*collective, tp.rank, tp.world));
  ModelConfig local = weights->config();
  local.num_kv_heads = tp.num_kv_heads;  // this rank's cache holds only its kv heads
  ASSIGN_OR_RETURN(auto kv, KvCache::Create(local, kv_options));
  return std::unique_ptr<CpuBackend>(
      new CpuBackend(std::move(weights), std::move(kv), std::move(collective), compute));
}

void CpuBackend::Project(const float* in, int64_t T, int64_t K, std::span<const MatrixView> views, float* out,
                         int64_t ldo) {
  bool ran = false;
  if (compute_.matmul_activations == MatMulActivations::kBf16) {
    ran = MatMulBf16Activations(in, T, K, K, views, out, ldo);
  } else if (compute_.matmul_activations == MatMulActivations::kInt8) {
    ran = MatMulInt8Activations(in, T, K, K, views, out, ldo);
  }
  if (!ran) MatMul(in, T, K, K, views, out, ldo);
}

absl::Status CpuBackend::AllReduce(float* data, int64_t count) {
  if (collective_->world() == 1) return absl::OkStatus();
  return collective_->AllReduceSum(data, static_cast<size_t>(count));
}

absl::Status CpuBackend::RowParallel(const float* in, int64_t T, int64_t K, const MatrixView& w, StageTimer& timer,
                                     int layer, LoraTarget target, bool contribute) {
  const int64_t H = config().hidden_size;
  const MatrixView views[] = {w};
  timer.Switch(&timings_.matmul_seconds);
  if (contribute) {
    Project(in, T, K, views, proj_.data(), H);
    // Before the all-reduce: each rank adds its input slice's part, as for the base matrix.
    AddLoraTerms(lora_groups_, layer, target, in, K, proj_.data(), H, lora_scratch_);
  } else {
    std::fill(proj_.begin(), proj_.begin() + T * H, 0.0f);
  }
  timer.Switch(&timings_.collective_seconds);
  auto s = AllReduce(proj_.data(), T * H);
  timer.Switch(&timings_.other_seconds);
  return s;
}

CpuBackend::CpuBackend(std::shared_ptr<const ModelWeights> weights, KvCache kv, std::shared_ptr<HostCollective> collective,
                       CpuComputeOptions compute)
    : weights_(std::move(weights)), collective_(std::move(collective)), kv_(std::move(kv)), compute_(compute) {
  const ModelConfig& c = config();
  for (int local = 0; local < 2; ++local) {
    const float theta = local ? (c.rope_local_theta > 0 ? c.rope_local_theta : c.rope_theta) : c.rope_theta;
    const float scale = local ? 1.0f : c.rope_global_scale;
    rope_[local].inv_freq.resize(c.head_dim / 2);
    for (int i = 0; i < c.head_dim / 2; ++i) {
      // As the reference: float32 exponent, float32 power; linear scaling divides the frequency.
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
      rope_[local].inv_freq[i] = 1.0f / std::pow(theta, exponent) / scale;
    }
  }
}

absl::Status CpuBackend::Forward(std::span<const SequenceStep> batch, StepLogits* out) {
  const ModelConfig& c = config();
  timings_ = {};
  StageTimer timer(&timings_.other_seconds);
  RETURN_IF_ERROR(ValidateStep(batch, c, kv_.num_blocks(), kv_.block_size(), kv_.layout().window()));
  const TensorParallel& tp = weights_->tp();
  const int64_t H = c.hidden_size, D = c.head_dim, I = tp.ffn_size;
  const int64_t q_dim = tp.num_q_heads * D, kv_dim = tp.num_kv_heads * D;
  const int64_t qkv_ld = q_dim + 2 * kv_dim;

  int64_t T = 0;
  for (const auto& s : batch) T += static_cast<int64_t>(s.tokens.size());
  positions_.resize(T);
  seq_of_token_.resize(T);
  tokens_.resize(T);
  std::vector<int64_t> logit_rows;  // token indices whose logits are wanted
  out->row_begin.clear();
  {
    int64_t t = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const auto& s = batch[i];
      out->row_begin.push_back(static_cast<int>(logit_rows.size()));
      for (size_t j = 0; j < s.tokens.size(); ++j, ++t) {
        tokens_[t] = s.tokens[j];
        positions_[t] = s.start_pos + static_cast<int32_t>(j);
        seq_of_token_[t] = static_cast<int>(i);
        if (s.logits == LogitsWanted::kAll || (s.logits == LogitsWanted::kLast && j + 1 == s.tokens.size())) {
          logit_rows.push_back(t);
        }
      }
    }
  }
  GroupByAdapter(batch);
  x_.resize(T * H);
  xn_.resize(T * H);
  qkv_.resize(T * qkv_ld);
  attn_.resize(T * q_dim);
  proj_.resize(T * H);
  gate_up_.resize(T * 2 * I);
  act_.resize(T * I);

  // Embedding, scaled by sqrt(hidden) as a float32 constant. Vocab-parallel:
  // the rank holding a token's row writes it, the others zeros, and the sum is exact.
  const float embed_scale = std::sqrt(static_cast<float>(H));
  const MatrixView& embed = weights_->embed();
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t local = static_cast<int64_t>(tokens_[t]) - tp.vocab_begin;
    if (local < 0 || local >= embed.rows) {
      std::fill(&x_[t * H], &x_[t * H] + H, 0.0f);
      continue;
    }
    DequantizeRow(embed, local, &x_[t * H]);
    for (int64_t i = 0; i < H; ++i) x_[t * H + i] *= embed_scale;
  }
  RETURN_IF_ERROR(AllReduce(x_.data(), T * H));
  // Rows that ask for no intervention or read are left alone: each hook below
  // loops over the rows that do.
  hooks_.Reset(batch, positions_, static_cast<int>(H), tp.rank == 0);
  hooks_.Capture(ActivationKind::kResidual, 0, x_.data());

  // cos/sin per token, shared by all layers of a kind and all heads: [T][D/2][2].
  const bool any_local = std::any_of(c.layer_attention.begin(), c.layer_attention.end(),
                                     [](LayerAttention a) { return a == LayerAttention::kLocal; });
  for (int local = 0; local < (any_local ? 2 : 1); ++local) {
    Rope& rope = rope_[local];
    rope.cos_sin.resize(T * D);
    for (int64_t t = 0; t < T; ++t) {
      const float pos = static_cast<float>(positions_[t]);
      for (int64_t i = 0; i < D / 2; ++i) {
        const float angle = pos * rope.inv_freq[i];
        rope.cos_sin[t * D + 2 * i] = std::cos(angle);
        rope.cos_sin[t * D + 2 * i + 1] = std::sin(angle);
      }
    }
  }
  const float q_scale = static_cast<float>(std::pow(static_cast<double>(c.QueryScalar()), -0.5));

  for (int layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeights& lw = weights_->layer(layer);
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; ++t) RmsNorm(&x_[t * H], lw.attn_norm.data(), c.rms_norm_eps, &xn_[t * H], H);
    const MatrixView qkv_w[] = {lw.q, lw.k, lw.v};
    timer.Switch(&timings_.matmul_seconds);
    Project(xn_.data(), T, H, qkv_w, qkv_.data(), qkv_ld);
    AddLoraTerms(lora_groups_, layer, LoraTarget::kQ, xn_.data(), H, qkv_.data(), qkv_ld, lora_scratch_);
    AddLoraTerms(lora_groups_, layer, LoraTarget::kK, xn_.data(), H, qkv_.data() + q_dim, qkv_ld, lora_scratch_);
    AddLoraTerms(lora_groups_, layer, LoraTarget::kV, xn_.data(), H, qkv_.data() + q_dim + kv_dim, qkv_ld,
                 lora_scratch_);
    timer.Switch(&timings_.other_seconds);

    const std::vector<float>& cos_sin = rope_[c.IsLocal(layer) ? 1 : 0].cos_sin;
    const bool qk_norm = c.qk_norm();
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; ++t) {
      float* row = &qkv_[t * qkv_ld];
      for (int h = 0; h < tp.num_q_heads; ++h) {
        if (qk_norm) RmsNorm(row + h * D, lw.q_norm.data(), c.rms_norm_eps, row + h * D, D);
        ApplyRope(row + h * D, &cos_sin[t * D], static_cast<int>(D));
        for (int64_t d = 0; d < D; ++d) row[h * D + d] *= q_scale;
      }
      float* k = row + q_dim;
      const float* v = k + kv_dim;
      const SequenceStep& s = batch[seq_of_token_[t]];
      const int32_t pos = positions_[t];
      const KvTableView table =
          KvTableView::For(kv_.layout(), layer, s.block_table, s.local_block_table, s.local_block_begin);
      const int64_t block_base = static_cast<int64_t>(table.Block(pos / kv_.block_size())) * kv_.block_stride() +
                                 static_cast<int64_t>(pos % kv_.block_size()) * D;
      for (int kh = 0; kh < tp.num_kv_heads; ++kh) {
        if (qk_norm) RmsNorm(k + kh * D, lw.k_norm.data(), c.rms_norm_eps, k + kh * D, D);
        ApplyRope(k + kh * D, &cos_sin[t * D], static_cast<int>(D));
        kv_.WriteRow(layer, 0, block_base + kv_.HeadOffset(kh), k + kh * D);
        kv_.WriteRow(layer, 1, block_base + kv_.HeadOffset(kh), v + kh * D);
      }
    }
    timer.Switch(&timings_.attention_seconds);
    Attention(layer, batch);
    timer.Switch(&timings_.other_seconds);
    hooks_.AblateHeads(layer, tp, static_cast<int>(D), attn_.data());

    RETURN_IF_ERROR(RowParallel(attn_.data(), T, q_dim, lw.o, timer, layer, LoraTarget::kO, tp.adds_attention_output));
    const bool sandwich = c.sandwich_norms();
    if (sandwich) {
#pragma omp parallel for schedule(static) if (T > 1)
      for (int64_t t = 0; t < T; ++t) RmsNorm(&proj_[t * H], lw.post_attn_norm.data(), c.rms_norm_eps, &proj_[t * H], H);
    }
    // The term the layer adds, summed over the ranks (after Gemma 2/3's post-norm, which would undo a scale).
    hooks_.ScaleAttention(layer, proj_.data());
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; ++t) {
      AddInPlace(&proj_[t * H], &x_[t * H], H);
      RmsNorm(&x_[t * H], lw.ffn_norm.data(), c.rms_norm_eps, &xn_[t * H], H);
    }
    // What was added to the stream (post-normed).
    hooks_.Capture(ActivationKind::kAttentionOutput, layer, proj_.data());
    const MatrixView gate_up_w[] = {lw.gate, lw.up};
    timer.Switch(&timings_.matmul_seconds);
    Project(xn_.data(), T, H, gate_up_w, gate_up_.data(), 2 * I);
    AddLoraTerms(lora_groups_, layer, LoraTarget::kGate, xn_.data(), H, gate_up_.data(), 2 * I, lora_scratch_);
    AddLoraTerms(lora_groups_, layer, LoraTarget::kUp, xn_.data(), H, gate_up_.data() + I, 2 * I, lora_scratch_);
    timer.Switch(&timings_.other_seconds);
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; ++t) GeluTanhMul(&gate_up_[t * 2 * I], &gate_up_[t * 2 * I + I], &act_[t * I], I);
    RETURN_IF_ERROR(RowParallel(act_.data(), T, I, lw.down, timer, layer, LoraTarget::kDown));
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; ++t) {
      if (sandwich) RmsNorm(&proj_[t * H], lw.post_ffn_norm.data(), c.rms_norm_eps, &proj_[t * H], H);
    }
    hooks_.ScaleMlp(layer, proj_.data());
#pragma omp parallel for schedule(static) if (T > 1)
    for (int64_t t = 0; t < T; ++t) AddInPlace(&proj_[t * H], &x_[t * H], H);
    hooks_.Capture(ActivationKind::kMlpOutput, layer, proj_.data());
    hooks_.Steer(layer, x_.data());
    // Hugging Face's hidden_states hold no raw output of the last layer: its
    // index is the final norm's.
    if (layer + 1 < c.num_layers) {
      hooks_.Capture(ActivationKind::kResidual, layer + 1, x_.data());
    }
  }
  hooks_.CaptureFinalNorm(c.num_layers, x_.data(),
                          weights_->final_norm().data(), c.rms_norm_eps);
  hooks_.TakeActivations(&out->activations);

  const int64_t R = static_cast<int64_t>(logit_rows.size());
  out->vocab_size = c.vocab_size;
  out->values.resize(R * c.vocab_size);
  for (int64_t r = 0; r < R; ++r) {
    RmsNorm(&x_[logit_rows[r] * H], weights_->final_norm().data(), c.rms_norm_eps, &xn_[r * H], H);
  }
  const MatrixView head[] = {embed};
  timer.Switch(&timings_.matmul_seconds);
  if (tp.world == 1) {
    Project(xn_.data(), R, H, head, out->values.data(), c.vocab_size);
    if (c.final_logit_softcap > 0) SoftCap(c.final_logit_softcap, out->values.data(), R * c.vocab_size);
    return absl::OkStatus();
  }
  // Vocab-parallel logits: each rank computes its slice (padded to vocab_slice), then all gather.
  const int64_t slice = tp.vocab_slice;
  local_logits_.assign(R * slice, 0.0f);
  Project(xn_.data(), R, H, head, local_logits_.data(), slice);
  timer.Switch(&timings_.collective_seconds);
  gathered_.resize(static_cast<size_t>(tp.world) * R * slice);
  RETURN_IF_ERROR(collective_->AllGather(local_logits_.data(), R * slice, gathered_.data()));
  timer.Switch(&timings_.other_seconds);
  PlaceVocabSlices(gathered_.data(), tp.world, R, slice, c.vocab_size, out->values.data());
  if (c.final_logit_softcap > 0) SoftCap(c.final_logit_softcap, out->values.data(), R * c.vocab_size);
  return absl::OkStatus();
}

void CpuBackend::GroupByAdapter(std::span<const SequenceStep> batch) {
  lora_groups_.clear();
  int64_t t = 0;
  for (const SequenceStep& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (s.adapter != nullptr) {
      auto it = std::find_if(lora_groups_.begin(), lora_groups_.end(),
                             [&](const LoraGroup& g) { return g.adapter == s.adapter; });
      if (it == lora_groups_.end()) it = lora_groups_.insert(lora_groups_.end(), LoraGroup{s.adapter, {}});
      for (int64_t j = 0; j < n; ++j) it->tokens.push_back(t + j);
    }
    t += n;
  }
}

void CpuBackend::Attention(int layer, std::span<const SequenceStep> batch) {
  const ModelConfig& c = config();
  const TensorParallel& tp = weights_->tp();
  const int64_t D = c.head_dim;
  const int64_t q_dim = tp.num_q_heads * D;
  const int64_t qkv_ld = q_dim + 2 * tp.num_kv_heads * D;
  const int64_t T = static_cast<int64_t>(positions_.size());
  const bool local = c.IsLocal(layer);
  const KvRows k_cache = kv_.Rows(layer, 0), v_cache = kv_.Rows(layer, 1);
  const int threads = omp_get_max_threads();

  // This rank's query heads in runs that share a kv head: a run reads its keys and values once for all its heads.
  struct HeadRun {
    int begin, count, kv_head;
  };
  std::vector<HeadRun> runs;
  for (int h = 0; h < tp.num_q_heads; ++h) {
    // Global query head -> global kv head -> this rank's copy of it.
    const int kv_head = (tp.q_head_begin + h) / c.heads_per_kv() - tp.kv_head_begin;
    if (runs.empty() || runs.back().kv_head != kv_head) runs.push_back({h, 0, kv_head});
    ++runs.back().count;
  }
  int max_run = 0;
  for (const HeadRun& r : runs) max_run = std::max(max_run, r.count);
  const int64_t slot = max_run * (2 + D);  // one segment's max, sum and out of each head

  // A row's keys go in segments of kAttentionSegment from its first key, whatever the batch, and are combined in
  // segment order: its arithmetic depends on the row alone, however the segments are shared out. With rows enough
  // for every thread a row is one item; with few (decode at small batches), each segment of a long row is one,
  // so a long context spreads over the threads even at batch 1.
  const bool split = T * static_cast<int64_t>(runs.size()) < 2 * threads;
  attention_items_.clear();
  attention_combines_.clear();
  int64_t slots = 0;
  int most_segments = 1;
  for (int64_t t = 0; t < T; ++t) {
    // A local layer's query at position i sees keys i - window + 1 .. i.
    const int end = positions_[t] + 1;
    const int first = local ? std::max(0, end - c.sliding_window) : 0;
    const int segments = (end - first + kAttentionSegment - 1) / kAttentionSegment;
    most_segments = std::max(most_segments, segments);
    for (int r = 0; r < static_cast<int>(runs.size()); ++r) {
      if (!split || segments == 1) {
        attention_items_.push_back({t, r, first, end, 0, segments, -1});
        continue;
      }
      attention_combines_.push_back({t, r, segments, slots});
      for (int s = 0; s < segments; ++s) attention_items_.push_back({t, r, first, end, s, s + 1, slots++});
    }
  }
  partials_.resize(static_cast<size_t>(slots * slot));
  const int64_t scores_floats = max_run * kAttentionSegment;
  const int64_t per_thread = scores_floats + most_segments * slot;
  thread_scratch_.resize(static_cast<size_t>(threads * per_thread));

  const int64_t work = static_cast<int64_t>(attention_items_.size());
#pragma omp parallel for schedule(dynamic, 1) if (work > 1)
  for (int64_t w = 0; w < work; ++w) {
    const AttentionItem& it = attention_items_[w];
    const HeadRun& run = runs[it.run];
    const SequenceStep& s = batch[seq_of_token_[it.t]];
    const PagedKv kv{k_cache, v_cache,
                     KvTableView::For(kv_.layout(), layer, s.block_table, s.local_block_table, s.local_block_begin),
                     kv_.block_size(), kv_.block_stride(), kv_.HeadOffset(run.kv_head)};
    float* scratch = &thread_scratch_[static_cast<size_t>(omp_get_thread_num() * per_thread)];
    float* scores = scratch;
    float* own = scratch + scores_floats;  // this thread's segment slots, for a whole row
    const float* q = &qkv_[it.t * qkv_ld + run.begin * D];
    float* result = &attn_[it.t * q_dim + run.begin * D];
    for (int sg = it.seg_begin; sg < it.seg_end; ++sg) {
      const int first = it.first + sg * kAttentionSegment;
      const int end = std::min(it.end, first + kAttentionSegment);
      float* p = it.partial >= 0
                     ? &partials_[static_cast<size_t>(it.partial * slot)]
                     : own + (sg - it.seg_begin) * slot;
      AttendSegment(q, run.count, kv, first, end, static_cast<int>(D), c.attn_logit_softcap, scores, p,
                    p + max_run, p + 2 * max_run);
    }
    if (it.partial < 0) {
      for (int h = 0; h < run.count; ++h) {
        CombineSegments(it.seg_end - it.seg_begin, own + h, own + max_run + h, own + 2 * max_run + h * D, slot,
                        static_cast<int>(D), result + h * D);
      }
    }
  }
  const int64_t combines = static_cast<int64_t>(attention_combines_.size()) * max_run;
#pragma omp parallel for schedule(static) if (combines > 1)
  for (int64_t w = 0; w < combines; ++w) {
    const AttentionCombine& cb = attention_combines_[w / max_run];
    const int h = static_cast<int>(w % max_run);
    const HeadRun& run = runs[cb.run];
    if (h >= run.count) continue;
    const float* p = &partials_[static_cast<size_t>(cb.partial * slot)];
    CombineSegments(cb.segments, p + h, p + max_run + h, p + 2 * max_run + h * D, slot, static_cast<int>(D),
                    &attn_[cb.t * q_dim + (run.begin + h) * D]);
  }
}

}  // namespace gemma
