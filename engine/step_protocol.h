// The step protocol in plain types: what one sequence asks of one batched step, and what it gets back. The
// scheduler produces these rows; a local executor hands them to a backend, a remote one sends them to a worker.
#pragma once

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

// One sequence's part of a step. The spans point into storage that outlives the step (the scheduler's sequence,
// or the wire request).
struct StepRow {
  uint64_t sequence_id = 0;
  std::span<const int32_t> tokens;       // new tokens: a prompt chunk or one decode token
  int32_t start_pos = 0;                 // position of tokens[0]
  std::span<const int32_t> block_table;  // KV blocks covering positions [0, start_pos + tokens.size())
  bool sample = false;                   // draw the token after the last of `tokens`
  SamplingParams sampling;
  int32_t top_logprobs = 0;  // alternatives returned with a sampled token, and at each scored row (0..20)
  // Scoring: score_targets[i] follows tokens[i] and its log-prob is returned; -1: no target. Empty: no scoring.
  std::vector<int32_t> score_targets;
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
};

}  // namespace gemma
