// Token sampling (greedy, temperature, top-k, top-p; seeded) and log-probabilities from logits.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/step_protocol.h"

namespace gemma {


// Applies the penalties to `logits` in place for `history` (the sequence so far, its first `prompt_len` tokens
// the prompt). Repetition (Hugging Face): a token seen in the prompt or the output has its logit divided by
// repetition_penalty when positive, multiplied when negative. Presence and frequency (OpenAI, vLLM): a token
// generated n > 0 times loses presence_penalty once and frequency_penalty n times; the prompt does not count.
void ApplyPenalties(const SamplingParams& params, std::span<const int32_t> history, size_t prompt_len, float* logits,
                    int vocab);
// What ApplyPenalties reads of a history: each distinct token of the vocabulary in it (ascending) with how many
// times it was generated (0: only in the prompt). A GPU applies the penalties from this.
std::vector<std::pair<int32_t, int>> PenaltyCounts(std::span<const int32_t> history, size_t prompt_len, int vocab);

// Structured output: every token whose bit is clear in `allowed` (bit t of word t / 32) gets -infinity, so no
// sampling mode can draw it.
void ApplyTokenMask(std::span<const uint32_t> allowed, float* logits, int vocab);
// InvalidArgument unless `allowed` has (vocab + 31) / 32 words with at least one token of the vocabulary set.
absl::Status ValidateTokenMask(std::span<const uint32_t> allowed, int vocab);

// InvalidArgument with the allowed range for any out-of-range field.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// log softmax(logits)[id], computed in double.
double LogProbOf(const float* logits, int vocab, int id);
// The n most likely ids with their log-probs, most likely first (ties: lower id first).
std::vector<std::pair<int, double>> TopLogProbs(const float* logits, int vocab, int n);
// The highest logit's id (lowest id among ties).
int Argmax(const float* logits, int vocab);

// Samples the token at `position` of a sequence. The draw depends only on the
// seed, the position and the logits, so a sequence samples the same tokens
// whatever batch it runs in and when it is recomputed after preemption.
int SampleAt(const SamplingParams& params, int64_t position, const float* logits, int vocab);

// One sequence's sampler: its own RNG stream, so draws do not depend on the
// batch around it. Not thread-safe.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int Sample(const float* logits, int vocab);
  // A uniform double in [0, 1) from this sampler's stream (exposed for tests).
  double NextUniform();

 private:
  SamplingParams params_;
  uint64_t state_[4];
  std::vector<std::pair<float, int>> candidates_;
};

}  // namespace gemma
