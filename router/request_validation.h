// Checks public API requests before any work is queued: every bad request gets InvalidArgument saying what is
// wrong and what is allowed.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gemma/v1/gemma.pb.h"
#include "tokenizer/utf8.h"

namespace gemma {

// The router's configured ceilings (flags), beside the model's own limits.
struct RouterLimits {
  int32_t max_new_tokens = 4096;     // ceiling on parameters.max_new_tokens
  // Ceiling on prompt + max_new_tokens, also capped by the context; by default the model's context alone (8k for
  // Gemma 1 and 2, 32k for Gemma 3 1B, 128k above).
  int32_t max_total_tokens = std::numeric_limits<int32_t>::max();
  int32_t max_stop_sequences = 8;
  int32_t max_stop_sequence_bytes = 256;
  int32_t max_top_logprobs = 20;
  int32_t default_max_new_tokens = 256;
  int64_t max_activation_bytes = int64_t{256} << 20;  // activation data one Score request may ask for
  int64_t max_message_bytes = 4 << 20;                // the public port's message size: a unary answer's ceiling
};

// What the model allows (from the workers' model info).
struct ModelLimits {
  int32_t vocab_size = 0;
  int32_t context = 0;
  bool chat_system_role = false;  // Gemma 3's template takes a leading system message
};

// GenerationParameters.n's ceiling (samples of one input), and the ceiling on the outputs of one request (inputs x
// n, or the choices of an OpenAI request).
inline constexpr int32_t kMaxSamples = 128;
// GenerateRequest.inputs' ceiling.
inline constexpr int32_t kMaxInputs = 64;

// Parameters and input shape, before tokenization: ranges, stop sequences,
// chat roles, token ids, UTF-8.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, const RouterLimits& router,
                                     const ModelLimits& model);

// The request's inputs: `input`, or 1..kMaxInputs `inputs` (not both), with at most kMaxSamples outputs in all.
// One request per input, each with `input` set, in order.
absl::StatusOr<std::vector<v1::GenerateRequest>> SplitInputs(const v1::GenerateRequest& request);
// The same for Score (at most kMaxSamples inputs too); target_ids only with `input`.
absl::StatusOr<std::vector<v1::ScoreRequest>> SplitInputs(const v1::ScoreRequest& request);

// Whether `p` asks for a structured output (json_object, json_schema): "" and "text" are free text.
bool HasStructuredFormat(const v1::GenerationParameters& p);

// num_beams, length_penalty and early_stopping, and what beams cannot be combined with (part of
// ValidateGenerateRequest).
absl::Status ValidateBeamParameters(const v1::GenerationParameters& parameters);

// After tokenization: the prompt is non-empty and prompt + max_new_tokens fits
// the context and the router's total. Returns the max_new_tokens to use (the
// default when 0 was asked, shortened to what the context allows).
absl::StatusOr<int32_t> ResolveMaxNewTokens(int32_t prompt_tokens, int32_t requested, const RouterLimits& router,
                                            const ModelLimits& model);

absl::Status ValidateScoreRequest(const v1::ScoreRequest& request, const RouterLimits& router, const ModelLimits& model);

// After tokenization: a scored input has at least two tokens and fits the context and the router's total (a
// scored token costs what a prompt token of Generate does).
absl::Status ValidateScoreLength(int32_t tokens, const RouterLimits& router, const ModelLimits& model);
// target_ids (none, or one per scored token, each in [-1, vocab)) and the scoring mode, once the input's token
// count is known.
absl::Status ValidateScoreTargets(const v1::ScoreRequest& request, int32_t tokens, const ModelLimits& model);

}  // namespace gemma
