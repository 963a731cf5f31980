// The contract every compute backend (CPU now, CUDA later) implements: run one batched step over the paged KV cache.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/step_protocol.h"
#include "shard/model/lora_adapter.h"
#include "shard/model/lora_loader.h"
#include "shard/model/model_config.h"
#include "shard/runtime/sampler.h"

namespace gemma {

enum class LogitsWanted { kNone, kLast, kAll };

// One sequence's part of a step: its new tokens (a prompt chunk or one decode
// token) at positions start_pos.., written to and attending over the KV rows its
// block table addresses (positions 0..start_pos+tokens.size()-1).
struct SequenceStep {
  std::span<const int32_t> tokens;
  int32_t start_pos = 0;
  std::span<const int32_t> block_table;
  LogitsWanted logits = LogitsWanted::kLast;
  // With the backend's kv_window(): the local layers' blocks, as StepRow::local_block_table says. Placed after
  // `logits` so that existing {tokens, start_pos, block_table, logits} initializers keep their meaning.
  std::span<const int32_t> local_block_table;
  int32_t local_block_begin = 0;
  // This rank's slice of the row's LoRA adapter; null: the base model. Rows of other adapters (or none) in the
  // same step are computed exactly as without it.
  const LoraAdapter* adapter = nullptr;
  std::span<const Intervention> interventions;
  // Read at every token of this row, into StepLogits::activations.
  std::span<const ActivationPoint> activations;
};

// Logits of one step: rows in the order of the batch (kAll: one per token,
// kLast: one, kNone: none). row_begin[i] is sequence i's first row.
struct StepLogits {
  int vocab_size = 0;
  std::vector<float> values;  // [rows, vocab_size]
  std::vector<int> row_begin;
  // activations[i][j]: sequence i's activation point j, [its tokens, hidden_size] (rank 0 fills them; followers'
  // are left empty). Empty for sequences that asked for none.
  std::vector<std::vector<std::vector<float>>> activations;
  const float* Row(int r) const { return values.data() + static_cast<int64_t>(r) * vocab_size; }
};

// Where one step's time went, for metrics and profiling.
struct StepTimings {
  double matmul_seconds = 0;
  double attention_seconds = 0;
  double collective_seconds = 0;
  double other_seconds = 0;
};

// One logits row to turn into a token where the logits are (on a GPU: without copying them to the host).
struct RowSample {
  int row = 0;              // index into the step's logits rows
  SamplingParams params;
  int64_t position = 0;     // the position the token takes; with the seed, it fixes the draw
  std::span<const uint32_t> allowed;  // structured output's mask (see StepRow::allowed_tokens); empty: any token
  // With params.has_penalties(): the sequence's tokens so far, its first penalty_prompt_len the prompt
  // (ApplyPenalties). The draw reads the penalized logits; log-probs stay the model's.
  std::span<const int32_t> penalty_history;
  size_t penalty_prompt_len = 0;
  int top_logprobs = 0;  // the most likely tokens returned with the draw, 0..20
};
struct SampledToken {
  int32_t token = -1;
  float logprob = 0;  // log-softmax of the unmodified logits
  std::vector<TokenLogprob> top_logprobs;  // the model's most likely tokens, most likely first (ties: lower id)
};

// Adds wall time to whichever counter is current. Not thread-safe.
class StageTimer {
 public:
  explicit StageTimer(double* current);
  ~StageTimer();
  void Switch(double* next);

 private:
  double* current_;
  double start_;
};

// Implementations say whether they are thread-safe; a step is one call.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual int num_kv_blocks() const = 0;
  virtual int kv_block_size() const = 0;
  // How local layers keep their window (KvWindow); none by default: every block holds every layer.
  virtual KvWindow kv_window() const { return {}; }
  // What adapters the backend can hold; by default any the loader reads (up to kMaxLoraRank), any number a step.
  // Fixed for the backend's life.
  virtual LoraCapacity lora_capacity() const { return {}; }
  // Runs the step; InvalidArgument (naming the sequence) for token ids outside
  // the vocabulary, positions past the context, or block tables too short or
  // holding ids outside the pool. Nothing is written when it fails validation.
  virtual absl::Status Forward(std::span<const SequenceStep> batch, StepLogits* out) = 0;
  // Forward, then one token for each of `samples`, drawn where the logits are. With `logits_to_host` false,
  // out->values may be left empty (nothing on the host reads them). The default samples on the host (SampleAt),
  // the same draws as the host sampler gives; a device may draw differently, but as reproducibly.
  virtual absl::Status ForwardAndSample(std::span<const SequenceStep> batch, std::span<const RowSample> samples,
                                        bool logits_to_host, StepLogits* out, std::vector<SampledToken>* tokens);
  // Timings of the last Forward.
  virtual StepTimings last_timings() const = 0;
};

// Shared validation for backends: also each row's interventions and activation points, and with a window its
// local block table. A row's adapter is trusted to have been loaded for this model and rank (LoadLoraAdapter
// checks its shapes).
absl::Status ValidateStep(std::span<const SequenceStep> batch, const ModelConfig& config, int num_blocks,
                          int block_size, KvWindow window = {});

}  // namespace gemma
