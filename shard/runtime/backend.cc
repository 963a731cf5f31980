#include "shard/runtime/backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace gemma {
namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const char* InterventionName(InterventionKind kind) {
  switch (kind) {
    case InterventionKind::kSteer:
      return "steer";
    case InterventionKind::kScaleAttention:
      return "scale_attention";
    case InterventionKind::kScaleMlp:
      return "scale_mlp";
    case InterventionKind::kAblateHead:
      return "ablate_head";
  }
  return "unknown";
}

absl::Status ValidateInterventions(size_t seq,
                                   std::span<const Intervention> interventions,
                                   const ModelConfig& c) {
  for (size_t k = 0; k < interventions.size(); ++k) {
    const Intervention& iv = interventions[k];
    const std::string what =
        absl::StrCat("sequence ", seq, ": intervention ", k, " (",
                     InterventionName(iv.kind), ")");
    if (iv.kind > InterventionKind::kAblateHead) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": unknown kind"));
    }
    if (iv.layer < 0 || iv.layer >= c.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": layer ", iv.layer, " is outside [0, ", c.num_layers, ")"));
    }
    if (iv.begin_pos < 0 || iv.begin_pos > iv.end_pos) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": positions [", iv.begin_pos, ", ", iv.end_pos,
                       ") are not a range with 0 <= begin_pos <= end_pos"));
    }
    switch (iv.kind) {
      case InterventionKind::kSteer:
        if (iv.vector.size() != static_cast<size_t>(c.hidden_size)) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": vector of ", iv.vector.size(),
                           " values; hidden_size is ", c.hidden_size));
        }
        for (size_t j = 0; j < iv.vector.size(); ++j) {
          if (!std::isfinite(iv.vector[j])) {
            return absl::InvalidArgumentError(
                absl::StrCat(what, ": vector[", j, "] is not finite"));
          }
        }
        break;
      case InterventionKind::kScaleAttention:
      case InterventionKind::kScaleMlp:
        if (!std::isfinite(iv.factor)) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": factor ", iv.factor, " is not finite"));
        }
        break;
      case InterventionKind::kAblateHead:
        if (iv.head < 0 || iv.head >= c.num_heads) {
          return absl::InvalidArgumentError(absl::StrCat(
              what, ": head ", iv.head, " is outside [0, ", c.num_heads, ")"));
        }
        break;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateActivationPoints(size_t seq,
                                      std::span<const ActivationPoint> points,
                                      const ModelConfig& c) {
  for (size_t k = 0; k < points.size(); ++k) {
    const ActivationPoint& a = points[k];
    // Residual index num_layers is the final norm's output (Hugging Face's
    // hidden_states[num_layers]).
    const int32_t limit =
        a.kind == ActivationKind::kResidual ? c.num_layers + 1 : c.num_layers;
    const char* name = a.kind == ActivationKind::kResidual ? "residual"
                       : a.kind == ActivationKind::kAttentionOutput
                           ? "attention_output"
                       : a.kind == ActivationKind::kMlpOutput ? "mlp_output"
                                                              : nullptr;
    if (name == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", seq, ": activation ", k, ": unknown kind"));
    }
    if (a.index < 0 || a.index >= limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", seq, ": activation ", k, " (", name,
                       "): index ", a.index, " is outside [0, ", limit, ")"));
    }
  }
  return absl::OkStatus();
}

// A row's local table covers the block indices from those its first query's window reaches to its last position.
absl::Status ValidateLocalBlocks(size_t seq, const SequenceStep& s, int num_blocks, int block_size, KvWindow window) {
  if (!window.enabled()) {
    if (s.local_block_table.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": a local block table was sent, but this backend "
                                                   "keeps every layer in one block (no KV windows)"));
  }
  const int64_t end = static_cast<int64_t>(s.start_pos) + static_cast<int64_t>(s.tokens.size());
  const int64_t first = std::max<int64_t>(0, s.start_pos - window.window + 1) / block_size;
  const int64_t last = (end + block_size - 1) / block_size;
  if (s.local_block_begin < 0 || s.local_block_begin > first) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": local block table starts at block index ",
                                                   s.local_block_begin, ", the step's window needs it from 0 to ", first));
  }
  if (static_cast<int64_t>(s.local_block_table.size()) < (last - s.local_block_begin) * window.local_groups) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", seq, ": local block table of ", s.local_block_table.size(), " blocks from block index ",
        s.local_block_begin, " does not reach position ", end - 1, " (", window.local_groups, " blocks per index)"));
  }
  for (int32_t b : s.local_block_table) {
    if (b < 0 || b >= num_blocks) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", seq, ": local block id ", b, " is outside the pool [0, ", num_blocks, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

StageTimer::StageTimer(double* current) : current_(current), start_(NowSeconds()) {}
StageTimer::~StageTimer() { Switch(nullptr); }

void StageTimer::Switch(double* next) {
  const double now = NowSeconds();
  if (current_ != nullptr) *current_ += now - start_;
  current_ = next;
  start_ = now;
}

absl::Status ValidateStep(std::span<const SequenceStep> batch, const ModelConfig& config, int num_blocks,
                          int block_size, KvWindow window) {
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    if (s.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": no tokens in step"));
    if (s.start_pos < 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": negative start position"));
    const int64_t end = static_cast<int64_t>(s.start_pos) + static_cast<int64_t>(s.tokens.size());
    if (end > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": positions up to ", end, " exceed the context of ",
                                                     config.max_position_embeddings));
    }
    if (end > static_cast<int64_t>(s.block_table.size()) * block_size) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block table of ", s.block_table.size(),
                                                     " blocks covers ", s.block_table.size() * block_size,
                                                     " positions, step needs ", end));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": token id ", t, " is outside the vocabulary [0, ",
                                                       config.vocab_size, ")"));
      }
    }
    for (int32_t b : s.block_table) {
      if (b < 0 || b >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block id ", b, " is outside the pool [0, ",
                                                       num_blocks, ")"));
      }
    }
    RETURN_IF_ERROR(ValidateLocalBlocks(i, s, num_blocks, block_size, window));
    RETURN_IF_ERROR(ValidateInterventions(i, s.interventions, config));
    RETURN_IF_ERROR(ValidateActivationPoints(i, s.activations, config));
  }
  return absl::OkStatus();
}

absl::Status Backend::ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples, bool,
                                       StepLogits* out, std::vector<SampledToken>* tokens) {
  RETURN_IF_ERROR(Forward(batch, out));
  tokens->clear();
  const int vocab = config().vocab_size;
  for (const RowSample& r : samples) {
    const float* row = out->Row(r.row);
    int token;
    if (r.allowed.empty() && !r.params.has_penalties()) {
      token = SampleAt(r.params, r.position, row, vocab);
    } else {  // on a copy: reported log-probs stay the model's own
      std::vector<float> adjusted(row, row + vocab);
      ApplyPenalties(r.params, r.penalty_history, r.penalty_prompt_len, adjusted.data(), vocab);
      if (!r.allowed.empty()) ApplyTokenMask(r.allowed, adjusted.data(), vocab);
      token = SampleAt(r.params, r.position, adjusted.data(), vocab);
    }
    SampledToken& drawn = tokens->emplace_back(SampledToken{token, static_cast<float>(LogProbOf(row, vocab, token)), {}});
    for (const auto& [id, lp] : TopLogProbs(row, vocab, r.top_logprobs)) {
      drawn.top_logprobs.push_back({id, static_cast<float>(lp)});
    }
  }
  return absl::OkStatus();
}

}  // namespace gemma
