// The step protocol in plain types: what one sequence asks of one batched step, and what it gets back. The
// scheduler produces these rows; a local executor hands them to a backend, a remote one sends them to a worker.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <span>
#include <vector>

namespace gemma {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;
  // Hugging Face semantics: over the prompt and the output. > 0; 1: none.
  float repetition_penalty = 1.0f;
  // OpenAI/vLLM semantics: over generated tokens only. [-2, 2].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// A change to one sequence's forward pass (KerasNLP's layer_intercept_fn, served): it applies at the sequence's
// positions [begin_pos, end_pos) and to no other row of the batch. Layers are 0-based.
enum class InterventionKind : uint8_t {
  kSteer,           // residual stream after decoder layer `layer` += vector (hidden_size floats)
  kScaleAttention,  // the attention term the layer adds to the residual stream (after any post-norm) *= factor
  kScaleMlp,        // the MLP term the layer adds to the residual stream (after any post-norm) *= factor
  kAblateHead,      // layer's query head `head` zeroed before o_proj
};
struct Intervention {
  InterventionKind kind = InterventionKind::kSteer;
  int32_t layer = 0;
  std::vector<float> vector;      // kSteer
  float factor = 1.0f;            // kScaleAttention, kScaleMlp
  int32_t head = 0;               // kAblateHead: a global query head index
  int32_t begin_pos = 0;
  int32_t end_pos = INT32_MAX;
};

// An activation to read out, named as Hugging Face and the reference data name them.
enum class ActivationKind : uint8_t {
  kResidual,         // output_hidden_states[index]: 0 the scaled embedding, i the output of layer i-1, num_layers
                     // the final norm's output
  kAttentionOutput,  // layer `index`'s attention term added to the residual stream
  kMlpOutput,        // layer `index`'s MLP term added to the residual stream
};
struct ActivationPoint {
  ActivationKind kind = ActivationKind::kResidual;
  int32_t index = 0;
};

// How a model's KV pool serves its sliding-window (local) layers, for the scheduler that hands out its blocks. All
// blocks are alike: a block holds block_size positions of as many layers as the model has global ones. A global
// block holds the global layers; a local block one group of local layers (the last group padded), so a position
// of the local layers takes `local_groups` blocks, and only while a query may still see it: a local layer's query
// at position i attends to keys i - window < j <= i. Zero: no windows (Gemma 1, or a backend that keeps every
// layer in one block): a block holds every layer and every position is kept.
struct KvWindow {
  int32_t window = 0;        // positions a local layer's query sees, itself included
  int32_t local_groups = 0;  // local blocks per block index
  bool enabled() const { return window > 0 && local_groups > 0; }
  // The most block indices whose local blocks a sequence of `positions` positions holds at once, computed in runs of
  // at most `chunk`: a run and the window - 1 positions before it, and one more position (an overlapped step's
  // reservation), span at most this many blocks of `block_size`; plus the one index before the window that the
  // block manager keeps for forks (BlockManager::Slide).
  int64_t MostLocalIndices(int64_t positions, int chunk, int block_size) const {
    if (!enabled()) return 0;
    const int64_t span = (window + std::max(chunk, 1) + block_size - 1) / block_size + 2;
    return std::min((positions + block_size - 1) / block_size, span);
  }
};

// One sequence's part of a step. The spans point into storage that outlives the step (the scheduler's sequence,
// or the wire request).
struct StepRow {
  uint64_t sequence_id = 0;
  std::span<const int32_t> tokens;       // new tokens: a prompt chunk or one decode token
  int32_t start_pos = 0;                 // position of tokens[0]
  std::span<const int32_t> block_table;  // KV blocks covering positions [0, start_pos + tokens.size())
  // With a KvWindow: the local layers' blocks, local_groups per block index (index-major) from block index
  // local_block_begin on, through the step's last position; earlier indices have left every window. From
  // local_block_begin <= max(0, start_pos - window + 1) / block_size.
  std::span<const int32_t> local_block_table;
  int32_t local_block_begin = 0;
  bool sample = false;                   // draw the token after the last of `tokens`
  SamplingParams sampling;
  int32_t top_logprobs = 0;  // alternatives returned with a sampled token, and at each scored row (0..20)
  // Scoring: score_targets[i] follows tokens[i] and its log-prob is returned; -1: no target. Empty: no scoring.
  std::vector<int32_t> score_targets;
  // Scoring (KerasNLP's logits mode): also the score_logits largest logits at each scored row (1..kMaxTopLogits),
  // or the whole row (-1); 0: none.
  int32_t score_logits = 0;
  static constexpr int32_t kMaxTopLogits = 256;
  // Penalties: the executor keeps each penalized sequence's tokens as its rows come (every row of it, prompt
  // chunks included), so a row carries only its new tokens. penalty_history, the sequence's tokens at positions
  // [0, start_pos + tokens.size()), is sent only where the executor cannot have them: the first row of a
  // sequence that starts after a cached prefix, and a step resent after the executor answered FailedPrecondition.
  std::span<const int32_t> penalty_history;
  int32_t penalty_prompt_len = 0;  // how many of the sequence's first tokens are its prompt
  // Overlapped steps: `tokens` is empty and the one new token is the one this sequence drew in the step before,
  // still in flight when this row was planned; the executor fills it in where that draw is known.
  bool token_from_last_step = false;
  // Structured output: bit t (word t / 32) set = token t may be drawn; the others are masked out before the
  // draw (reported log-probs stay the model's own). Empty: any token.
  std::span<const uint32_t> allowed_tokens;
  // The LoRA adapter this row runs with, by the id the executor gave it when it was registered; 0: the base model.
  uint32_t adapter = 0;
  // Applied in this step's forward pass (a sequence sends them on every row: they change its KV too).
  std::span<const Intervention> interventions;
  // Activations returned for this row's tokens at these positions (ascending; empty: none).
  std::span<const ActivationPoint> activations;
  std::span<const int32_t> activation_positions;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// One row's outcome, in the order of the rows.
struct RowResult {
  uint64_t sequence_id = 0;
  bool sampled = false;
  int32_t token = -1;
  float logprob = 0;  // of `token` under the model, before any sampling transform
  std::vector<TokenLogprob> top_logprobs;  // most likely first
  std::vector<float> score_logprobs;       // one per score target (0 where the target was -1)
  // Scoring with top_logprobs > 0: the most likely tokens at each scored row, most likely first.
  std::vector<std::vector<TokenLogprob>> score_top_logprobs;
  // Scoring with score_logits > 0: the largest logits at each scored row, largest first (`logprob` holds the
  // logit; ties: lower id). With -1: every scored row's logits, [rows, vocab].
  std::vector<std::vector<TokenLogprob>> score_top_logits;
  std::vector<float> score_logits;
  // One per requested activation point: [positions of activation_positions in this row, hidden_size], f32.
  std::vector<std::vector<float>> activations;
  int32_t activation_rows = 0;  // how many positions each holds
};

}  // namespace gemma
