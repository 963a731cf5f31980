#include "router/request_validation.h"

#include <algorithm>
#include <cmath>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/scheduler.h"
#include "engine/status_macros.h"
#include "tokenizer/chat_template.h"

namespace gemma {
namespace {

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

absl::Status ValidateInput(const v1::Input& input, const ModelLimits& model) {
  switch (input.kind_case()) {
    case v1::Input::kText:
      // Empty is <bos> alone, as OpenAI and vLLM take an empty prompt: generation from the start of a document.
      if (!IsValidUtf8(input.text())) return Invalid("input.text is not valid UTF-8");
      return absl::OkStatus();
    case v1::Input::kChat: {
      if (input.chat().messages_size() == 0) return Invalid("input.chat has no messages; allowed: at least one");
      std::vector<std::string_view> roles;
      for (int i = 0; i < input.chat().messages_size(); ++i) {
        const auto& m = input.chat().messages(i);
        roles.push_back(m.role());
        if (!IsValidUtf8(m.content())) return Invalid(absl::StrCat("input.chat.messages[", i, "].content is not valid UTF-8"));
      }
      if (auto e = CheckChatRoles(roles, model.chat_system_role ? ChatStyle::kGemma3 : ChatStyle::kGemma)) {
        return Invalid(absl::StrCat("input.chat.messages[", e->index, "].role is \"",
                                    input.chat().messages(static_cast<int>(e->index)).role(), "\": ", e->why));
      }
      return absl::OkStatus();
    }
    case v1::Input::kTokenIds: {
      const auto& ids = input.token_ids().ids();
      if (ids.empty()) return Invalid("input.token_ids is empty; allowed: at least one id");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= model.vocab_size) {
          return Invalid(absl::StrCat("input.token_ids[", i, "] = ", ids[i], " is outside the vocabulary; allowed: [0, ",
                                      model.vocab_size, ")"));
        }
      }
      return absl::OkStatus();
    }
    default:
      return Invalid("input is missing; allowed: text, chat or token_ids");
  }
}

}  // namespace

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request, const RouterLimits& router,
                                     const ModelLimits& model) {
  RETURN_IF_ERROR(ValidateInput(request.input(), model));
  const auto& p = request.parameters();
  if (p.max_new_tokens() < 0 || p.max_new_tokens() > router.max_new_tokens) {
    return Invalid(absl::StrCat("max_new_tokens ", p.max_new_tokens(), " is out of range; allowed: 0..",
                                router.max_new_tokens, " (0 = default ", router.default_max_new_tokens, ")"));
  }
  if (!(p.temperature() >= 0.0f) || !std::isfinite(p.temperature())) {
    return Invalid(absl::StrCat("temperature ", p.temperature(), " is invalid; allowed: a finite value >= 0 (0 = greedy)"));
  }
  if (p.top_k() < 0) return Invalid(absl::StrCat("top_k ", p.top_k(), " is negative; allowed: >= 0 (0 = no limit)"));
  if (p.top_p() != 0.0f && !(p.top_p() > 0.0f && p.top_p() <= 1.0f)) {
    return Invalid(absl::StrCat("top_p ", p.top_p(), " is invalid; allowed: (0, 1]"));
  }
  if (p.repetition_penalty() < 0.0f || !std::isfinite(p.repetition_penalty())) {
    return Invalid(absl::StrCat("repetition_penalty ", p.repetition_penalty(), " is invalid; allowed: > 0 (1 = none)"));
  }
  for (auto [v, name] : {std::pair{p.presence_penalty(), "presence_penalty"}, {p.frequency_penalty(), "frequency_penalty"}}) {
    if (!(v >= -2.0f && v <= 2.0f)) return Invalid(absl::StrCat(name, " ", v, " is invalid; allowed: [-2, 2]"));
  }
  if (p.stop_sequences_size() > router.max_stop_sequences) {
    return Invalid(absl::StrCat(p.stop_sequences_size(), " stop sequences given; allowed: at most ",
                                router.max_stop_sequences));
  }
  for (int i = 0; i < p.stop_sequences_size(); ++i) {
    const std::string& stop = p.stop_sequences(i);
    if (stop.empty() || static_cast<int>(stop.size()) > router.max_stop_sequence_bytes) {
      return Invalid(absl::StrCat("stop_sequences[", i, "] is ", stop.size(), " bytes; allowed: 1..",
                                  router.max_stop_sequence_bytes));
    }
    if (!IsValidUtf8(stop)) return Invalid(absl::StrCat("stop_sequences[", i, "] is not valid UTF-8"));
  }
  for (int i = 0; i < p.stop_token_ids_size(); ++i) {
    if (p.stop_token_ids(i) < 0 || p.stop_token_ids(i) >= model.vocab_size) {
      return Invalid(absl::StrCat("stop_token_ids[", i, "] = ", p.stop_token_ids(i),
                                  " is outside the vocabulary; allowed: [0, ", model.vocab_size, ")"));
    }
  }
  if (p.top_logprobs() < 0 || p.top_logprobs() > router.max_top_logprobs) {
    return Invalid(absl::StrCat("top_logprobs ", p.top_logprobs(), " is out of range; allowed: 0..", router.max_top_logprobs));
  }
  if (p.top_logprobs() > 0 && !p.logprobs()) return Invalid("top_logprobs needs logprobs = true");
  if (p.min_new_tokens() < 0 || p.min_new_tokens() > router.max_new_tokens) {
    return Invalid(absl::StrCat("min_new_tokens ", p.min_new_tokens(), " is out of range; allowed: 0..",
                                router.max_new_tokens, " (at most max_new_tokens)"));
  }
  if (p.min_new_tokens() > 0 && p.max_new_tokens() > 0 && p.min_new_tokens() > p.max_new_tokens()) {
    return Invalid(absl::StrCat("min_new_tokens ", p.min_new_tokens(), " exceeds max_new_tokens ", p.max_new_tokens(),
                                "; allowed: 0..", p.max_new_tokens()));
  }
  // A grammar ends its output with the model's stop: ignoring or holding it back would run past a valid output.
  if (HasStructuredFormat(p) && (p.ignore_eos() || p.min_new_tokens() > 0)) {
    return Invalid(absl::StrCat(p.ignore_eos() ? "ignore_eos" : "min_new_tokens",
                                " cannot be combined with response_format: a structured output ends where its ",
                                "grammar does; allowed: one of them"));
  }
  if (p.n() < 0 || p.n() > kMaxSamples) {
    return Invalid(absl::StrCat("n ", p.n(), " is out of range; allowed: 0..", kMaxSamples, " (0 is read as 1)"));
  }
  return ValidateBeamParameters(p);
}

namespace {

// `request` once per input, with `input` set; `outputs` is what each input answers with (n samples, or 1).
template <typename Request>
absl::StatusOr<std::vector<Request>> SplitByInput(const Request& request, int64_t outputs) {
  if (request.inputs_size() == 0) return std::vector<Request>{request};
  if (request.has_input()) return Invalid("input and inputs are both set; allowed: one of them");
  if (request.inputs_size() > kMaxInputs) {
    return Invalid(absl::StrCat("inputs has ", request.inputs_size(), " entries; allowed: 1..", kMaxInputs));
  }
  if (request.inputs_size() * outputs > kMaxSamples) {
    return Invalid(absl::StrCat(request.inputs_size(), " inputs x n ", outputs, " = ", request.inputs_size() * outputs,
                                " outputs; allowed: at most ", kMaxSamples));
  }
  std::vector<Request> parts;
  for (const v1::Input& input : request.inputs()) {
    Request& part = parts.emplace_back(request);
    part.clear_inputs();
    *part.mutable_input() = input;
  }
  return parts;
}

}  // namespace

absl::StatusOr<std::vector<v1::GenerateRequest>> SplitInputs(const v1::GenerateRequest& request) {
  return SplitByInput(request, std::max(1, request.parameters().n()));
}

absl::StatusOr<std::vector<v1::ScoreRequest>> SplitInputs(const v1::ScoreRequest& request) {
  if (request.inputs_size() > 0 && request.target_ids_size() > 0) {
    return Invalid("target_ids apply to `input` alone; allowed: none with inputs (one request per input instead)");
  }
  return SplitByInput(request, 1);
}

bool HasStructuredFormat(const v1::GenerationParameters& p) {
  return p.has_response_format() && p.response_format().type() != "" && p.response_format().type() != "text";
}

absl::Status ValidateBeamParameters(const v1::GenerationParameters& p) {
  if (p.num_beams() < 0 || p.num_beams() > BeamSearchParams::kMaxBeams) {
    return Invalid(absl::StrCat("num_beams ", p.num_beams(), " is out of range; allowed: 0 (no beam search) to ",
                                BeamSearchParams::kMaxBeams));
  }
  if (p.has_length_penalty() && !(p.length_penalty() >= -10.0f && p.length_penalty() <= 10.0f)) {
    return Invalid(absl::StrCat("length_penalty ", p.length_penalty(), " is out of range; allowed: [-10, 10]"));
  }
  if (p.num_beams() == 0) {
    if (p.has_length_penalty() || p.early_stopping()) {
      return Invalid("length_penalty and early_stopping apply to beam search; allowed: with num_beams 1..10");
    }
    return absl::OkStatus();
  }
  const char* other = p.temperature() != 0.0f                                        ? "temperature"
                      : p.top_k() != 0                                                ? "top_k"
                      : p.top_p() != 0.0f && p.top_p() != 1.0f                        ? "top_p"
                      : p.repetition_penalty() != 0.0f && p.repetition_penalty() != 1.0f ? "repetition_penalty"
                      : p.presence_penalty() != 0.0f                                  ? "presence_penalty"
                      : p.frequency_penalty() != 0.0f                                 ? "frequency_penalty"
                      : p.top_logprobs() != 0                                         ? "top_logprobs"
                      : p.stop_sequences_size() > 0                                   ? "stop_sequences"
                      : HasStructuredFormat(p)                                        ? "response_format"
                      : p.n() > 1                                                     ? "n"
                      : p.ignore_eos()                                                ? "ignore_eos"
                      : p.min_new_tokens() > 0                                        ? "min_new_tokens"
                                                                                      : nullptr;
  if (other != nullptr) {
    return Invalid(absl::StrCat("num_beams ", p.num_beams(), " cannot be combined with ", other,
                                ": beams rank the model's own log-probs; allowed: num_beams 0, or ", other, " unset"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> ResolveMaxNewTokens(int32_t prompt_tokens, int32_t requested, const RouterLimits& router,
                                            const ModelLimits& model) {
  if (prompt_tokens <= 0) return Invalid("the prompt has no tokens");
  const int32_t total_limit = std::min(router.max_total_tokens, model.context);
  if (prompt_tokens >= total_limit) {
    return Invalid(absl::StrCat("the prompt is ", prompt_tokens, " tokens; allowed: fewer than ", total_limit,
                                " (prompt + max_new_tokens must fit ", total_limit, ")"));
  }
  if (requested == 0) return std::min(router.default_max_new_tokens, total_limit - prompt_tokens);
  if (prompt_tokens + requested > total_limit) {
    return Invalid(absl::StrCat("prompt (", prompt_tokens, " tokens) + max_new_tokens (", requested, ") = ",
                                prompt_tokens + requested, " exceeds the limit of ", total_limit,
                                "; allowed max_new_tokens: 1..", total_limit - prompt_tokens));
  }
  return requested;
}

absl::Status ValidateScoreRequest(const v1::ScoreRequest& request, const RouterLimits& router, const ModelLimits& model) {
  RETURN_IF_ERROR(ValidateInput(request.input(), model));
  if (request.top_logprobs() < 0 || request.top_logprobs() > router.max_top_logprobs) {
    return Invalid(absl::StrCat("top_logprobs ", request.top_logprobs(), " is out of range; allowed: 0..",
                                router.max_top_logprobs));
  }
  return absl::OkStatus();
}

absl::Status ValidateScoreTargets(const v1::ScoreRequest& request, int32_t tokens, const ModelLimits& model) {
  if (!v1::ScoringMode_IsValid(request.mode())) {
    return Invalid(absl::StrCat("mode ", request.mode(), " is invalid; allowed: SCORING_MODE_LOGPROBS (0), ",
                                "SCORING_MODE_LOSS (1), SCORING_MODE_LOGITS (2)"));
  }
  if (request.mode() == v1::SCORING_MODE_LOGITS) {
    if (request.top_logits() != -1 && (request.top_logits() < 1 || request.top_logits() > StepRow::kMaxTopLogits)) {
      return Invalid(absl::StrCat("top_logits ", request.top_logits(), " is out of range; allowed: 1..",
                                  StepRow::kMaxTopLogits, ", or -1 for whole rows"));
    }
  } else if (request.top_logits() != 0) {
    return Invalid(absl::StrCat("top_logits ", request.top_logits(),
                                " needs mode SCORING_MODE_LOGITS; allowed: 0 in other modes"));
  }
  if (request.target_ids_size() == 0) return absl::OkStatus();
  if (request.target_ids_size() != tokens) {
    return Invalid(absl::StrCat("target_ids has ", request.target_ids_size(), " ids for an input of ", tokens,
                                " tokens (<bos> included); allowed: one per token, or none"));
  }
  for (int i = 0; i < request.target_ids_size(); ++i) {
    const int32_t t = request.target_ids(i);
    if (t < -1 || t >= model.vocab_size) {
      return Invalid(absl::StrCat("target_ids[", i, "] = ", t, " is outside the vocabulary; allowed: -1 (not ",
                                  "scored) or 0..", model.vocab_size - 1));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateScoreLength(int32_t tokens, const RouterLimits& router, const ModelLimits& model) {
  const int32_t limit = std::min(router.max_total_tokens, model.context);
  if (tokens < 2 || tokens > limit) {
    return Invalid(absl::StrCat("the input is ", tokens, " tokens (<bos> included); allowed: 2..", limit));
  }
  return absl::OkStatus();
}

}  // namespace gemma
