// What every public API does with a generation request before it runs, whichever protocol brought it: the
// served model, validation against the router's and the model's limits, tokenization (chat rendered with Gemma's
// template), and submission to the least-loaded group. Shared by the gRPC service and the HTTP (OpenAI) API so
// the same request gets the same tokens from either.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gemma/v1/gemma.pb.h"
#include "router/activation_request.h"
#include "router/active_request.h"
#include "router/group_set.h"
#include "router/model_changes.h"
#include "router/request_validation.h"
#include "router/router_metrics.h"

namespace gemma {

// What a Score request scores against (ScoreRequest.target_ids, checked by ScorePrompt), whether it wants losses
// (SCORING_MODE_LOSS), and which logits (SCORING_MODE_LOGITS: the top_logits largest, -1 whole rows, 0 none).
struct ScoreTargets {
  std::vector<int32_t> ids;
  bool losses = false;
  int32_t logits = 0;
};
inline ScoreTargets ScoreTargetsOf(const v1::ScoreRequest& request) {
  return {{request.target_ids().begin(), request.target_ids().end()},
          request.mode() == v1::SCORING_MODE_LOSS,
          request.mode() == v1::SCORING_MODE_LOGITS ? request.top_logits() : 0};
}
// The bytes of the whole logits rows a Score request of `len` tokens asks for (0 unless top_logits is -1).
int64_t WholeLogitsBytes(const v1::ScoreRequest& request, int32_t len, int32_t vocab_size);

// Thread-safe.
class RequestAdmission {
 public:
  // `metrics` may be null.
  RequestAdmission(GroupSet* groups, RouterLimits limits, RouterMetrics* metrics)
      : groups_(groups), limits_(limits), metrics_(metrics) {}

  // The served model; Unavailable until a group has joined.
  absl::StatusOr<std::shared_ptr<const ServedModel>> Model() const;
  static ModelLimits LimitsOf(const ServedModel& model);
  const RouterLimits& limits() const { return limits_; }
  int healthy_groups() const { return groups_->healthy(); }
  // The context a request may fill: the model's (or the workers' --max_model_len), capped by the router's total.
  int32_t MaxContext(const ServedModel& model) const;

  // The prompt's token ids: <bos> + the text or rendered chat; token ids as given.
  absl::StatusOr<std::vector<int32_t>> PromptIds(const ServedModel& model, const v1::Input& input) const;

  // How the request came, for metrics and for a consumer that does not block (see ActiveRequest::Options).
  struct Origin {
    std::string protocol = "grpc";
    std::string endpoint;
    std::function<void()> notify;
    bool counted = true;  // false: a part of another request (echo's prompt scoring), not counted on its own
  };
  // The request's n samples (parameters.n; 0 is 1), sample i drawing with seed + i: validated, tokenized and
  // handed to one group together, where they share the prompt's KV blocks (it is computed once); the status to
  // answer with otherwise (not counted: see Reject), and then none runs. `prompt_ids`, when given, are the
  // request's input already tokenized (PromptIds).
  absl::StatusOr<std::vector<std::shared_ptr<ActiveRequest>>> AdmitSamples(
      const ServedModel& model, const v1::GenerateRequest& request, Origin origin,
      const std::vector<int32_t>* prompt_ids = nullptr) const;
  // The checks AdmitSamples makes before tokenizing (ranges, stop sequences, roles), for a request that is answered
  // without generating (an echo of its prompt).
  absl::Status Validate(const ServedModel& model, const v1::GenerateRequest& request) const {
    return ValidateGenerateRequest(request, limits_, LimitsOf(model));
  }
  // A scored input's length: at least two tokens, within the context.
  absl::Status ValidateScoreLength(const ServedModel& model, int32_t tokens) const {
    return gemma::ValidateScoreLength(tokens, limits_, LimitsOf(model));
  }
  // A Score request validated and tokenized (not yet submitted): the ids to score.
  absl::StatusOr<std::vector<int32_t>> ScorePrompt(const ServedModel& model, const v1::ScoreRequest& request) const;
  // A Score request's activations, checked against the model, the scored length and --max_activation_bytes.
  absl::StatusOr<ActivationAsk> Activations(const ServedModel& model, const v1::ActivationRequest& request,
                                            int32_t len) const {
    return ActivationAskOf(request, model.info, len, limits_.max_activation_bytes);
  }
  // Hands the scoring of `prompt` (from ScorePrompt) to a group, reading the activations `activations` asks.
  absl::StatusOr<std::shared_ptr<ActiveRequest>> AdmitScore(const ServedModel& model, std::vector<int32_t> prompt,
                                                            int32_t top_logprobs, Origin origin,
                                                            ModelChanges changes = {},
                                                            const ActivationAsk& activations = {},
                                                            ScoreTargets targets = {}) const;
  // A request's adapter and interventions, checked against the model and the adapters the groups hold.
  absl::StatusOr<ModelChanges> Changes(const ServedModel& model, const std::string& adapter,
                                       const google::protobuf::RepeatedPtrField<v1::Intervention>& interventions,
                                       int32_t prompt_len) const;
  // The LoRA adapters the groups hold, sorted by name.
  std::vector<std::string> AdapterNames() const;
  bool HasAdapter(const std::string& name) const { return groups_->HasAdapter(name); }
  // Counts a request refused before it ran.
  void Reject(const absl::Status& status, const Origin& origin) const;

 private:
  // Validated and tokenized (`prompt_ids`, when given, are its input's ids).
  absl::StatusOr<ActiveRequest::Options> OptionsFor(const ServedModel& model, const v1::GenerateRequest& request,
                                                    const std::vector<int32_t>* prompt_ids) const;
  // A sample's own constraint: its response_format's grammar, or its min_new_tokens' mask (null: none).
  static absl::StatusOr<std::shared_ptr<TokenConstraint>> ConstraintFor(const ServedModel& model,
                                                                        const v1::GenerationParameters& parameters,
                                                                        const ActiveRequest::Options& options);
  // A request with the origin filled in, not yet submitted.
  std::shared_ptr<ActiveRequest> Make(const ServedModel& model, ActiveRequest::Options options,
                                      const Origin& origin) const;
  // The request's origin filled in, then handed to the least-loaded group.
  absl::StatusOr<std::shared_ptr<ActiveRequest>> Submit(const ServedModel& model, ActiveRequest::Options options,
                                                        Origin origin) const;

  GroupSet* groups_;
  const RouterLimits limits_;
  RouterMetrics* metrics_;
};

}  // namespace gemma
