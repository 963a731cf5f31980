#include "router/router_service.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "protos/grpc_status.h"
#include "gemma/worker/v1/worker.pb.h"
#include "tokenizer/chat_template.h"

namespace gemma {

RouterService::RouterService(GroupSet* groups, RouterLimits limits, ApiKeys keys, RouterMetrics* metrics,
                             ServiceRole role, PeerForwarder* forwarder)
    : groups_(groups),
      limits_(limits),
      admission_(groups, limits, metrics),
      keys_(std::move(keys)),
      metrics_(metrics),
      role_(role),
      forwarder_(forwarder) {}

namespace {

absl::Status CheckPeerProtocol(const grpc::ServerContext& context) {
  const std::string ours = absl::StrCat(static_cast<int>(worker::v1::PROTOCOL_VERSION_CURRENT));
  const auto& md = context.client_metadata();
  auto it = md.find(kRouterProtocolHeader);
  const std::string theirs = it == md.end() ? "none" : std::string(it->second.data(), it->second.size());
  if (theirs == ours) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the forwarding router speaks router protocol ", theirs, " and this router speaks ", ours,
      "; run routers of the same release (see docs/DEPLOY.md, upgrades)"));
}

absl::Status TooLargeForScore(int64_t bytes, int64_t max_message_bytes) {
  return absl::ResourceExhaustedError(absl::StrCat(
      "the Score answer would take about ", bytes, " bytes, past the router's message size (--max_message_bytes) of ",
      max_message_bytes, "; call ScoreStream, which sends each activation in a message of its own"));
}

}  // namespace

void RouterService::Admitted(grpc::ServerContext* context) const {
  if (role_ != ServiceRole::kPeer) return;
  context->AddInitialMetadata(kAdmittedTrailer, "1");
  context->AddTrailingMetadata(kAdmittedTrailer, "1");
}

void RouterService::CountRejected(const absl::Status& status, const char* endpoint) const {
  if (metrics_ == nullptr) return;
  // A forwarded call refused for want of room or a group is placed by the router that sent it, which counts how
  // it ends: counted here too, every such refusal would look like a failed request.
  if (role_ == ServiceRole::kPeer && (absl::IsUnavailable(status) || absl::IsResourceExhausted(status))) return;
  metrics_->Rejected(status, "grpc", endpoint);
}

std::optional<std::string> RouterService::ForwardTarget() const {
  if (role_ != ServiceRole::kPublic || forwarder_ == nullptr) return std::nullopt;
  auto peer = groups_->ForwardTarget();
  if (peer && metrics_) metrics_->Forwarded();
  return peer;
}

absl::StatusOr<std::shared_ptr<const ServedModel>> RouterService::Enter(const grpc::ServerContext& context,
                                                                       const char* endpoint) {
  const absl::Status s =
      role_ == ServiceRole::kPeer ? CheckPeerProtocol(context) : keys_.Check(context.client_metadata());
  absl::StatusOr<std::shared_ptr<const ServedModel>> model =
      s.ok() ? admission_.Model() : absl::StatusOr<std::shared_ptr<const ServedModel>>(s);
  if (!model.ok()) CountRejected(model.status(), endpoint);
  return model;
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> RouterService::Start(const ServedModel& model,
                                                                    const v1::GenerateRequest& request,
                                                                    const char* endpoint) {
  RequestAdmission::Origin origin{.protocol = "grpc", .endpoint = endpoint};
  auto active = admission_.Admit(model, request, origin);
  if (!active.ok()) CountRejected(active.status(), endpoint);
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
  auto model = Enter(*context, "Generate");
  if (!model.ok()) return ToGrpcStatus(model.status());
  if (auto peer = ForwardTarget()) {
    // A call the peer never admitted (it lost its groups, or has no room after all) is placed here.
    const auto forwarded = forwarder_->Generate(*peer, context, *request, response);
    if (!forwarded.place_here) return forwarded.status;
    response->Clear();
  }
  auto active = Start(**model, *request, "Generate");
  if (active.ok()) Admitted(context);
  if (!active.ok()) return ToGrpcStatus(active.status());
  if (auto s = Await(context, **active); !s.ok()) return ToGrpcStatus(s);
  *response = (*active)->Response();
  return grpc::Status::OK;
}

grpc::Status RouterService::GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                           grpc::ServerWriter<v1::GenerateStreamResponse>* writer) {
  auto model = Enter(*context, "GenerateStream");
  if (!model.ok()) return ToGrpcStatus(model.status());
  if (auto peer = ForwardTarget()) {
    const auto forwarded = forwarder_->GenerateStream(*peer, context, *request, writer);
    if (!forwarded.place_here) return forwarded.status;
  }
  auto active = Start(**model, *request, "GenerateStream");
  if (!active.ok()) return ToGrpcStatus(active.status());
  Admitted(context);
  // Sent at once: should the connection to a forwarding router drop later, it knows this call ran here.
  if (role_ == ServiceRole::kPeer) writer->SendInitialMetadata();
  // Checked while waiting too: a client that leaves a queued request is noticed before its first token.
  const auto client_gone = [context] { return context->IsCancelled(); };
  bool gone = false;
  while (auto event = (*active)->Next(client_gone)) {
    if (context->IsCancelled() || !writer->Write(*event)) {
      gone = true;
      break;
    }
  }
  if (gone || context->IsCancelled()) {
    (*active)->Cancel();  // the client is gone: leave the next step, free the KV blocks
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
  }
  return ToGrpcStatus((*active)->Wait());
}

absl::StatusOr<RouterService::ScorePlan> RouterService::PrepareScore(const ServedModel& model,
                                                                     const v1::ScoreRequest& request,
                                                                     const char* endpoint, bool unary) const {
  ScorePlan plan;
  absl::Status s;
  if (auto prompt = admission_.ScorePrompt(model, request); prompt.ok()) {
    plan.prompt = *std::move(prompt);
    const auto len = static_cast<int32_t>(plan.prompt.size());
    if (auto ask = admission_.Activations(model, request.activations(), len); ask.ok()) {
      plan.activations = *std::move(ask);
      // Refused before it runs, as far as an estimate can tell (text pieces vary); Score checks the answer too.
      const int64_t bytes = ScoreResponseBytesEstimate(plan.activations, len, request.top_logprobs());
      if (unary && !plan.activations.points.empty() && bytes > limits_.max_message_bytes) {
        s = TooLargeForScore(bytes, limits_.max_message_bytes);
      }
    } else {
      s = ask.status();
    }
  } else {
    s = prompt.status();
  }
  if (!s.ok()) {
    CountRejected(s, endpoint);
    return s;
  }
  return plan;
}

absl::StatusOr<std::shared_ptr<ActiveRequest>> RouterService::AdmitScore(const ServedModel& model,
                                                                         const v1::ScoreRequest& request,
                                                                         ScorePlan plan, const char* endpoint) {
  auto changes =
      admission_.Changes(model, request.adapter(), request.interventions(), static_cast<int32_t>(plan.prompt.size()));
  if (!changes.ok()) {
    CountRejected(changes.status(), endpoint);
    return changes.status();
  }
  auto active =
      admission_.AdmitScore(model, std::move(plan.prompt), request.top_logprobs(),
                            {.protocol = "grpc", .endpoint = endpoint}, *std::move(changes), plan.activations,
                            ScoreTargetsOf(request));
  if (!active.ok()) CountRejected(active.status(), endpoint);
  return active;
}

grpc::Status RouterService::Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) {
  auto model = Enter(*context, "Score");
  if (!model.ok()) return ToGrpcStatus(model.status());
  auto plan = PrepareScore(**model, *request, "Score", /*unary=*/true);
  if (!plan.ok()) return ToGrpcStatus(plan.status());
  if (auto peer = ForwardTarget()) {
    const auto forwarded = forwarder_->Score(*peer, context, *request, response);
    if (!forwarded.place_here) return forwarded.status;
    response->Clear();
  }
  const ActivationAsk ask = plan->activations;
  auto active = AdmitScore(**model, *request, *std::move(plan), "Score");
  if (!active.ok()) return ToGrpcStatus(active.status());
  Admitted(context);
  if (auto s = Await(context, **active); !s.ok()) return ToGrpcStatus(s);
  *response = (*active)->ScoreResult();
  int32_t hidden = 0;
  std::vector<std::vector<float>> values = (*active)->TakeActivations(&hidden);
  for (size_t i = 0; i < values.size(); ++i) {
    *response->add_activations() = EncodeActivation(ask, i, hidden, values[i]);
    std::vector<float>().swap(values[i]);  // held once, encoded or not
  }
  // The estimate let it run; the answer itself must fit too (long text pieces among the alternatives).
  if (const auto bytes = static_cast<int64_t>(response->ByteSizeLong());
      !ask.points.empty() && bytes > limits_.max_message_bytes) {
    response->Clear();
    return ToGrpcStatus(TooLargeForScore(bytes, limits_.max_message_bytes));
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::ScoreStream(grpc::ServerContext* context, const v1::ScoreRequest* request,
                                        grpc::ServerWriter<v1::ScoreStreamResponse>* writer) {
  auto model = Enter(*context, "ScoreStream");
  if (!model.ok()) return ToGrpcStatus(model.status());
  auto plan = PrepareScore(**model, *request, "ScoreStream", /*unary=*/false);
  if (!plan.ok()) return ToGrpcStatus(plan.status());
  if (auto peer = ForwardTarget()) {
    const auto forwarded = forwarder_->ScoreStream(*peer, context, *request, writer);
    if (!forwarded.place_here) return forwarded.status;
  }
  const ActivationAsk ask = plan->activations;
  auto active = AdmitScore(**model, *request, *std::move(plan), "ScoreStream");
  if (!active.ok()) return ToGrpcStatus(active.status());
  Admitted(context);
  if (role_ == ServiceRole::kPeer) writer->SendInitialMetadata();  // as GenerateStream: the sender sees it ran here
  if (auto s = Await(context, **active); !s.ok()) return ToGrpcStatus(s);
  v1::ScoreStreamResponse scores;
  *scores.mutable_scores() = (*active)->ScoreResult();
  if (!writer->Write(scores)) return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
  int32_t hidden = 0;
  std::vector<std::vector<float>> values = (*active)->TakeActivations(&hidden);
  for (size_t i = 0; i < values.size(); ++i) {
    v1::ScoreStreamResponse event;
    *event.mutable_activation() = EncodeActivation(ask, i, hidden, values[i]);
    std::vector<float>().swap(values[i]);
    if (context->IsCancelled() || !writer->Write(event)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) {
  auto model = Enter(*context, "Tokenize");
  if (!model.ok()) return ToGrpcStatus(model.status());
  if (!IsValidUtf8(request->text())) return ToGrpcStatus(absl::InvalidArgumentError("text is not valid UTF-8"));
  const Tokenizer& tokenizer = *(*model)->tokenizer;
  auto ids = tokenizer.Encode(request->text());
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  if (request->add_bos()) response->add_ids((*model)->info.bos_id());
  for (int32_t id : *ids) response->add_ids(id);
  for (int32_t id : response->ids()) {
    auto piece = tokenizer.Decode(std::vector<int32_t>{id});
    response->add_pieces(piece.ok() ? *piece : "");
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) {
  auto model = Enter(*context, "Detokenize");
  if (!model.ok()) return ToGrpcStatus(model.status());
  auto text = (*model)->tokenizer->Decode(std::vector<int32_t>(request->ids().begin(), request->ids().end()));
  if (!text.ok()) return ToGrpcStatus(text.status());
  response->set_text(*text);
  return grpc::Status::OK;
}

grpc::Status RouterService::GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                                         v1::ModelInfo* response) {
  auto model = Enter(*context, "GetModelInfo");
  if (!model.ok()) return ToGrpcStatus(model.status());
  const auto& info = (*model)->info;
  response->set_name(info.shape_name());
  response->set_vocab_size(info.vocab_size());
  response->set_max_context(admission_.MaxContext(**model));
  response->set_max_new_tokens_limit(limits_.max_new_tokens);
  response->set_bos_id(info.bos_id());
  response->set_eos_id(info.eos_id());
  response->set_tensor_parallel(info.tensor_parallel());
  response->set_healthy_groups(groups_->healthy());
  response->set_hidden_size(info.hidden_size());
  response->set_num_layers(info.num_layers());
  response->set_num_heads(info.num_heads());
  for (v1::Adapter& a : groups_->Adapters()) *response->add_adapters() = std::move(a);
  return grpc::Status::OK;
}

}  // namespace gemma
