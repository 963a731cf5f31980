#include "router/request_admission.h"

#include <algorithm>
#include <random>

#include "engine/status_macros.h"
#include "router/min_tokens_constraint.h"
#include "tokenizer/chat_template.h"

namespace gemma {

absl::StatusOr<std::shared_ptr<const ServedModel>> RequestAdmission::Model() const {
  std::shared_ptr<const ServedModel> model = groups_->model();
  if (model == nullptr) return absl::UnavailableError("no worker group has joined yet; retry later");
  return model;
}

ModelLimits RequestAdmission::LimitsOf(const ServedModel& model) {
  ModelLimits m;
  m.vocab_size = model.info.vocab_size();
  // The worker's --max_model_len when it set one (reported resolved, so never past the model's own context): a
  // longer request is refused here, with the others that do not fit, rather than by the worker mid-generation.
  m.context = model.info.max_model_len() > 0
                  ? std::min(model.info.max_model_len(), model.info.max_position_embeddings())
                  : model.info.max_position_embeddings();
  m.chat_system_role = model.info.model_family() == "gemma3";
  return m;
}

int32_t RequestAdmission::MaxContext(const ServedModel& model) const {
  return std::min(LimitsOf(model).context, limits_.max_total_tokens);
}

absl::StatusOr<std::vector<int32_t>> RequestAdmission::PromptIds(const ServedModel& model,
                                                                const v1::Input& input) const {
  if (input.has_token_ids()) return std::vector<int32_t>(input.token_ids().ids().begin(), input.token_ids().ids().end());
  std::string text = input.text();
  if (input.has_chat()) {
    std::vector<ChatMessage> messages;
    for (const auto& m : input.chat().messages()) messages.push_back({m.role(), m.content()});
    const ChatStyle style = model.info.model_family() == "gemma3" ? ChatStyle::kGemma3 : ChatStyle::kGemma;
    ASSIGN_OR_RETURN(text, RenderChat(messages, style));
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->Encode(text));
  ids.insert(ids.begin(), model.info.bos_id());
  return ids;
}

absl::StatusOr<std::vector<std::shared_ptr<ActiveRequest>>> RequestAdmission::AdmitSamples(
    const ServedModel& model, const v1::GenerateRequest& request, Origin origin,
    const std::vector<int32_t>* prompt_ids) const {
  ASSIGN_OR_RETURN(ActiveRequest::Options first, OptionsFor(model, request, prompt_ids));
  const int n = std::max(1, request.parameters().n());
  std::vector<std::shared_ptr<ActiveRequest>> samples;
  for (int i = 0; i < n; ++i) {
    ActiveRequest::Options o = first;
    o.seed = first.seed + static_cast<uint64_t>(i);
    if (i > 0) o.fork_of = samples[0]->id();  // the prompt is computed once, by the first
    // Each sample holds its own place in a grammar, and counts its own tokens toward min_new_tokens.
    if (i > 0) {
      ASSIGN_OR_RETURN(o.constraint, ConstraintFor(model, request.parameters(), o));
    }
    samples.push_back(Make(model, std::move(o), origin));
  }
  if (absl::Status s = groups_->SubmitTogether(samples); !s.ok()) {
    for (const auto& r : samples) r->Cancel();  // those a group took leave before their next step
    return s;
  }
  return samples;
}

absl::StatusOr<ActiveRequest::Options> RequestAdmission::OptionsFor(const ServedModel& model,
                                                                    const v1::GenerateRequest& request,
                                                                    const std::vector<int32_t>* prompt_ids) const {
  const ModelLimits model_limits = LimitsOf(model);
  RETURN_IF_ERROR(ValidateGenerateRequest(request, limits_, model_limits));
  std::vector<int32_t> prompt;
  if (prompt_ids != nullptr) {
    prompt = *prompt_ids;
  } else {
    ASSIGN_OR_RETURN(prompt, PromptIds(model, request.input()));
  }
  ASSIGN_OR_RETURN(const int32_t max_new,
                   ResolveMaxNewTokens(static_cast<int32_t>(prompt.size()), request.parameters().max_new_tokens(),
                                       limits_, model_limits));
  ActiveRequest::Options o;
  o.prompt = std::move(prompt);
  o.max_new_tokens = max_new;
  o.eos_ids.push_back(model.info.eos_id());
  o.eos_ids.insert(o.eos_ids.end(), model.info.extra_eos_ids().begin(), model.info.extra_eos_ids().end());
  if (request.input().has_chat() && model.tokenizer->end_of_turn_id() >= 0) {
    o.eos_ids.push_back(model.tokenizer->end_of_turn_id());
  }
  o.ignore_eos = request.parameters().ignore_eos();
  o.stop_ids.assign(request.parameters().stop_token_ids().begin(), request.parameters().stop_token_ids().end());
  if (request.parameters().min_new_tokens() > max_new) {
    return absl::InvalidArgumentError(absl::StrCat("min_new_tokens ", request.parameters().min_new_tokens(),
                                                   " exceeds the ", max_new, " tokens this request may generate (",
                                                   "max_new_tokens, or what the context leaves); allowed: 0..",
                                                   max_new));
  }
  ASSIGN_OR_RETURN(o.constraint, ConstraintFor(model, request.parameters(), o));
  o.stop_sequences.assign(request.parameters().stop_sequences().begin(), request.parameters().stop_sequences().end());
  o.parameters = request.parameters();
  o.seed = request.parameters().has_seed() ? request.parameters().seed() : std::random_device{}();
  ASSIGN_OR_RETURN(ModelChanges changes, Changes(model, request.adapter(), request.interventions(),
                                                 static_cast<int32_t>(o.prompt.size())));
  o.adapter = std::move(changes.adapter);
  o.interventions = std::move(changes.interventions);
  return o;
}

absl::StatusOr<std::shared_ptr<TokenConstraint>> RequestAdmission::ConstraintFor(
    const ServedModel& model, const v1::GenerationParameters& parameters, const ActiveRequest::Options& options) {
  if (HasStructuredFormat(parameters)) {
    // Validation refuses min_new_tokens beside a structured format: one constraint or the other.
    return model.structured_output->ConstraintFor(parameters.response_format(), options.eos_ids);
  }
  std::vector<int32_t> stops = options.stop_ids;
  if (!options.ignore_eos) stops.insert(stops.end(), options.eos_ids.begin(), options.eos_ids.end());
  return MinTokens(stops, parameters.min_new_tokens(), model.info.vocab_size());
}

std::shared_ptr<ActiveRequest> RequestAdmission::Make(const ServedModel& model, ActiveRequest::Options options,
                                                      const Origin& origin) const {
  options.protocol = origin.protocol;
  options.endpoint = origin.endpoint;
  options.notify = origin.notify;
  return std::make_shared<ActiveRequest>(groups_->NewRequestId(), std::move(options), model.tokenizer.get(),
                                         origin.counted ? metrics_ : nullptr);
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> RequestAdmission::Submit(const ServedModel& model,
                                                                        ActiveRequest::Options options,
                                                                        Origin origin) const {
  auto active = Make(model, std::move(options), origin);
  RETURN_IF_ERROR(groups_->Submit(active));
  return active;
}

absl::StatusOr<std::vector<int32_t>> RequestAdmission::ScorePrompt(const ServedModel& model,
                                                                  const v1::ScoreRequest& request) const {
  const ModelLimits model_limits = LimitsOf(model);
  RETURN_IF_ERROR(ValidateScoreRequest(request, limits_, model_limits));
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptIds(model, request.input()));
  RETURN_IF_ERROR(gemma::ValidateScoreLength(static_cast<int32_t>(prompt.size()), limits_, model_limits));
  RETURN_IF_ERROR(gemma::ValidateScoreTargets(request, static_cast<int32_t>(prompt.size()), model_limits));
  return prompt;
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> RequestAdmission::AdmitScore(const ServedModel& model,
                                                                            std::vector<int32_t> prompt,
                                                                            int32_t top_logprobs, Origin origin,
                                                                            ModelChanges changes,
                                                                            const ActivationAsk& activations,
                                                                            ScoreTargets targets) const {
  ActiveRequest::Options o;
  o.prompt = std::move(prompt);
  o.score = true;
  o.score_top_logprobs = top_logprobs;
  o.score_targets = std::move(targets.ids);
  o.score_losses = targets.losses;
  o.score_logits = targets.logits;
  o.adapter = std::move(changes.adapter);
  o.interventions = std::move(changes.interventions);
  o.activations = activations.points;
  o.activation_positions = activations.positions;
  return Submit(model, std::move(o), std::move(origin));
}

int64_t WholeLogitsBytes(const v1::ScoreRequest& request, int32_t len, int32_t vocab_size) {
  if (request.mode() != v1::SCORING_MODE_LOGITS || request.top_logits() != -1) return 0;
  const int64_t rows = request.target_ids_size() > 0 ? len : len - 1;  // one per entry of logprobs
  return rows * vocab_size * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<ModelChanges> RequestAdmission::Changes(
    const ServedModel& model, const std::string& adapter,
    const google::protobuf::RepeatedPtrField<v1::Intervention>& interventions, int32_t prompt_len) const {
  return ModelChangesOf(model.info, adapter, interventions, prompt_len,
                        adapter.empty() || groups_->HasAdapter(adapter));
}

std::vector<std::string> RequestAdmission::AdapterNames() const {
  std::vector<std::string> names;
  for (const v1::Adapter& a : groups_->Adapters()) names.push_back(a.name());
  return names;
}

void RequestAdmission::Reject(const absl::Status& status, const Origin& origin) const {
  if (metrics_ != nullptr) metrics_->Rejected(status, origin.protocol, origin.endpoint);
}

}  // namespace gemma
