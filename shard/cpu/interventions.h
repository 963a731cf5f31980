// Per-row interventions (steering, scaling, head ablation) and activation reads
// of the CPU forward pass. The forward pass calls these at fixed points of each
// layer; only the tokens of rows that ask are touched, so the other rows of a
// step are computed bit for bit as in a step without any.
//
// Where, in layer L (Hugging Face names):
// - kAblateHead: the input of o_proj, head h's columns h * head_dim onwards.
// - kScaleAttention, kScaleMlp: the term added to the residual stream, summed
//   over the ranks: the o_proj / down_proj output, after Gemma 2/3's
//   post-attention / post-feedforward norm (a scale before it would be undone).
// - kAttentionOutput, kMlpOutput (reads): the term added to the residual
//   stream, i.e. after that post-norm on Gemma 2/3, so that residual L+1 =
//   residual L + attention output + MLP output holds for every family.
// - kSteer: the residual stream after the layer (both adds); the next layer,
//   the read of residual L+1 and (last layer) the final norm see it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shard/model/model_config.h"
#include "shard/model/tensor_parallel.h"
#include "shard/runtime/backend.h"
#include "shard/runtime/hooked_rows.h"

namespace gemma {

// One step's interventions and reads. Not thread-safe; reused across steps
// (Reset each time).
class StepHooks {
 public:
  // Looks at the step's rows; `capture` is false on tensor-parallel followers
  // (only rank 0 reads activations). Tokens are laid out row after row, as the
  // forward pass lays them out; positions_of_token[t] is token t's position.
  void Reset(std::span<const SequenceStep> batch,
             std::span<const int32_t> positions_of_token, int hidden_size,
             bool capture);
  // Whether any row asks for anything: with neither, every other call is
  // skipped.
  bool active() const { return !hooked_.rows().empty(); }

  // kAblateHead: zeroes, in `attn` ([T, num_q_heads * head_dim], this rank's
  // query heads, head-major), each ablated head this rank holds. With query
  // heads replicated over ranks, every replica zeroes it.
  void AblateHeads(int layer, const TensorParallel& tp, int head_dim,
                   float* attn) const;
  // kScaleAttention / kScaleMlp: `proj` ([T, hidden]) is the term the layer
  // adds to the residual stream, summed over the ranks (after any post-norm).
  void ScaleAttention(int layer, float* proj) const {
    Scale(InterventionKind::kScaleAttention, layer, proj);
  }
  void ScaleMlp(int layer, float* proj) const {
    Scale(InterventionKind::kScaleMlp, layer, proj);
  }
  // kSteer: `x` ([T, hidden]) is the residual stream after decoder layer
  // `layer`.
  void Steer(int layer, float* x) const;

  // Copies `values` ([T, hidden]) into the reads of `kind` at `index` (see
  // ActivationPoint).
  void Capture(ActivationKind kind, int index, const float* values);
  // Residual index num_layers: the final norm of `x` ([T, hidden], the last
  // layer's output, steered) for the rows that read it. Computed here, for
  // every token of those rows, since the logits need it only at some.
  void CaptureFinalNorm(int num_layers, const float* x, const float* final_norm,
                        float eps);
  // Hands the reads over: out[i][j] is row i's point j, [its tokens, hidden];
  // empty rows for rows without reads.
  void TakeActivations(std::vector<std::vector<std::vector<float>>>* out);

 private:
  using Row = HookedRows::Row;
  void Scale(InterventionKind kind, int layer, float* proj) const;
  // Calls fn(token, ...) for each token of `row` within the intervention's
  // positions.
  template <typename Fn>
  void ForTokensIn(const Row& row, const Intervention& iv, Fn fn) const;

  std::span<const int32_t> positions_;
  int64_t hidden_ = 0;
  HookedRows hooked_;  // the rows that ask for interventions or reads, and their reads
};

}  // namespace gemma
