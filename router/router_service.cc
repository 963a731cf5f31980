#include "router/router_service.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "protos/grpc_status.h"
#include "router/tokenizer/chat_template.h"

namespace gemma {

RouterService::RouterService(std::vector<std::unique_ptr<WorkerGroup>> groups, std::unique_ptr<Tokenizer> tokenizer,
                             RouterLimits limits, RouterMetrics* metrics)
    : groups_(std::move(groups)), tokenizer_(std::move(tokenizer)), limits_(limits), metrics_(metrics) {
  model_.vocab_size = groups_.front()->info().vocab_size();
  model_.context = groups_.front()->info().max_position_embeddings();
}

absl::StatusOr<std::vector<int32_t>> RouterService::PromptIds(const v1::Input& input) {
  const int32_t bos = groups_.front()->info().bos_id();
  if (input.has_token_ids()) return std::vector<int32_t>(input.token_ids().ids().begin(), input.token_ids().ids().end());
  std::string text = input.text();
  if (input.has_chat()) {
    std::vector<ChatMessage> messages;
    for (const auto& m : input.chat().messages()) messages.push_back({m.role(), m.content()});
    auto rendered = RenderChat(messages);
    if (!rendered.ok()) return rendered.status();
    text = *rendered;
  }
  auto ids = tokenizer_->Encode(text);
  if (!ids.ok()) return ids.status();
  ids->insert(ids->begin(), bos);
  return ids;
}

absl::Status RouterService::Submit(const std::shared_ptr<ActiveRequest>& request) {
  WorkerGroup* best = nullptr;
  for (auto& g : groups_) {
    if (g->healthy() && (best == nullptr || g->load() < best->load())) best = g.get();
  }
  if (best == nullptr) return absl::UnavailableError("no healthy worker group; retry later");
  return best->Submit(request);
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> RouterService::Start(const v1::GenerateRequest& request) {
  auto active = Admit(request);
  if (!active.ok() && metrics_) metrics_->Rejected(active.status());
  return active;
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> RouterService::Admit(const v1::GenerateRequest& request) {
  if (auto s = ValidateGenerateRequest(request, limits_, model_); !s.ok()) return s;
  auto prompt = PromptIds(request.input());
  if (!prompt.ok()) return prompt.status();
  auto max_new = ResolveMaxNewTokens(static_cast<int32_t>(prompt->size()), request.parameters().max_new_tokens(),
                                     limits_, model_);
  if (!max_new.ok()) return max_new.status();
  ActiveRequest::Options o;
  o.prompt = std::move(*prompt);
  o.max_new_tokens = *max_new;
  o.stop_ids.push_back(groups_.front()->info().eos_id());
  if (request.input().has_chat() && tokenizer_->end_of_turn_id() >= 0) o.stop_ids.push_back(tokenizer_->end_of_turn_id());
  o.stop_ids.insert(o.stop_ids.end(), request.parameters().stop_token_ids().begin(),
                    request.parameters().stop_token_ids().end());
  o.stop_sequences.assign(request.parameters().stop_sequences().begin(), request.parameters().stop_sequences().end());
  o.parameters = request.parameters();
  o.seed = request.parameters().has_seed() ? request.parameters().seed() : std::random_device{}();
  auto active = std::make_shared<ActiveRequest>(next_id_++, std::move(o), tokenizer_.get(), metrics_);
  if (auto s = Submit(active); !s.ok()) return s;
  return active;
}

absl::Status RouterService::Await(grpc::ServerContext* context, ActiveRequest& request) {
  while (!request.WaitFor(std::chrono::milliseconds(50))) {
    if (context->IsCancelled()) request.Cancel();
  }
  return request.Wait();
}

grpc::Status RouterService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) {
  auto active = Start(*request);
  if (!active.ok()) return ToGrpcStatus(active.status());
  if (auto s = Await(context, **active); !s.ok()) return ToGrpcStatus(s);
  *response = (*active)->Response();
  return grpc::Status::OK;
}

grpc::Status RouterService::GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                           grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  auto active = Start(*request);
  if (!active.ok()) return ToGrpcStatus(active.status());
  while (auto event = (*active)->Next()) {
    if (context->IsCancelled() || !writer->Write(*event)) {
      (*active)->Cancel();  // the client is gone: leave the next step, free the KV blocks
      break;
    }
  }
  return ToGrpcStatus((*active)->Wait());
}

grpc::Status RouterService::Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) {
  if (auto s = ValidateScoreRequest(*request, limits_, model_); !s.ok()) return ToGrpcStatus(s);
  auto prompt = PromptIds(request->input());
  if (!prompt.ok()) return ToGrpcStatus(prompt.status());
  if (prompt->size() < 2 || static_cast<int32_t>(prompt->size()) > model_.context) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("the input is ", prompt->size(),
                                                                " tokens; allowed: 2..", model_.context)));
  }
  ActiveRequest::Options o;
  o.prompt = std::move(*prompt);
  o.score = true;
  auto active = std::make_shared<ActiveRequest>(next_id_++, std::move(o), tokenizer_.get(), metrics_);
  if (auto s = Submit(active); !s.ok()) {
    if (metrics_) metrics_->Rejected(s);
    return ToGrpcStatus(s);
  }
  if (auto s = Await(context, *active); !s.ok()) return ToGrpcStatus(s);
  *response = active->ScoreResult();
  return grpc::Status::OK;
}

grpc::Status RouterService::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) {
  if (!IsValidUtf8(request->text())) return ToGrpcStatus(absl::InvalidArgumentError("text is not valid UTF-8"));
  auto ids = tokenizer_->Encode(request->text());
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  if (request->add_bos()) response->add_ids(groups_.front()->info().bos_id());
  for (int32_t id : *ids) response->add_ids(id);
  for (int32_t id : response->ids()) {
    auto piece = tokenizer_->Decode(std::vector<int32_t>{id});
    response->add_pieces(piece.ok() ? *piece : "");
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::Detokenize(grpc::ServerContext*, const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) {
  auto text = tokenizer_->Decode(std::vector<int32_t>(request->ids().begin(), request->ids().end()));
  if (!text.ok()) return ToGrpcStatus(text.status());
  response->set_text(*text);
  return grpc::Status::OK;
}

grpc::Status RouterService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*, v1::ModelInfo* response) {
  const auto& info = groups_.front()->info();
  response->set_name(info.shape_name());
  response->set_vocab_size(info.vocab_size());
  response->set_max_context(std::min(info.max_position_embeddings(), limits_.max_total_tokens));
  response->set_max_new_tokens_limit(limits_.max_new_tokens);
  response->set_bos_id(info.bos_id());
  response->set_eos_id(info.eos_id());
  response->set_tensor_parallel(info.tensor_parallel());
  int healthy = 0;
  for (const auto& g : groups_) healthy += g->healthy() ? 1 : 0;
  response->set_healthy_groups(healthy);
  return grpc::Status::OK;
}

}  // namespace gemma
