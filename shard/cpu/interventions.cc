#include "shard/cpu/interventions.h"

#include <algorithm>

#include "shard/cpu/ops.h"

namespace gemma {

void StepHooks::Reset(std::span<const SequenceStep> batch,
                      std::span<const int32_t> positions_of_token,
                      int hidden_size, bool capture) {
  positions_ = positions_of_token;
  hidden_ = hidden_size;
  hooked_.Reset(batch, hidden_size, capture);
}

template <typename Fn>
void StepHooks::ForTokensIn(const Row& row, const Intervention& iv,
                            Fn fn) const {
  for (int64_t t = row.first; t < row.first + row.count; ++t) {
    if (positions_[t] >= iv.begin_pos && positions_[t] < iv.end_pos) fn(t);
  }
}

void StepHooks::AblateHeads(int layer, const TensorParallel& tp, int head_dim,
                            float* attn) const {
  const int64_t q_dim = static_cast<int64_t>(tp.num_q_heads) * head_dim;
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind != InterventionKind::kAblateHead || iv.layer != layer)
        continue;
      const int local = iv.head - tp.q_head_begin;
      if (local < 0 || local >= tp.num_q_heads)
        continue;  // another rank's head
      ForTokensIn(r, iv, [&](int64_t t) {
        float* head = attn + t * q_dim + static_cast<int64_t>(local) * head_dim;
        std::fill(head, head + head_dim, 0.0f);
      });
    }
  }
}

void StepHooks::Scale(InterventionKind kind, int layer, float* proj) const {
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind != kind || iv.layer != layer) continue;
      ForTokensIn(r, iv, [&](int64_t t) {
        float* row = proj + t * hidden_;
        for (int64_t i = 0; i < hidden_; ++i) row[i] *= iv.factor;
      });
    }
  }
}

void StepHooks::Steer(int layer, float* x) const {
  for (const Row& r : hooked_.rows()) {
    for (const Intervention& iv : hooked_.batch()[r.index].interventions) {
      if (iv.kind != InterventionKind::kSteer || iv.layer != layer) continue;
      ForTokensIn(r, iv, [&](int64_t t) {
        float* row = x + t * hidden_;
        for (int64_t i = 0; i < hidden_; ++i) row[i] += iv.vector[i];
      });
    }
  }
}

void StepHooks::Capture(ActivationKind kind, int index, const float* values) {
  hooked_.ForEachRead(kind, index, [&](const Row& r, float* out) {
    std::copy_n(values + r.first * hidden_, r.count * hidden_, out);
  });
}

void StepHooks::CaptureFinalNorm(int num_layers, const float* x,
                                 const float* final_norm, float eps) {
  hooked_.ForEachRead(
      ActivationKind::kResidual, num_layers, [&](const Row& r, float* out) {
        for (int64_t t = 0; t < r.count; ++t) {
          RmsNorm(x + (r.first + t) * hidden_, final_norm, eps,
                  out + t * hidden_, hidden_);
        }
      });
}

void StepHooks::TakeActivations(
    std::vector<std::vector<std::vector<float>>>* out) {
  hooked_.TakeReads(out);
}

}  // namespace gemma
