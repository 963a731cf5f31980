#include "router/router_service.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "protos/grpc_status.h"
#include "gemma/worker/v1/worker.pb.h"
#include "tokenizer/chat_template.h"

namespace gemma {

RouterService::RouterService(GroupSet* groups, RouterLimits limits, ApiKeys keys, RouterMetrics* metrics,
                             ServiceRole role, PeerForwarder* forwarder, ActivationBudget* activation_budget)
    : groups_(groups),
      limits_(limits),
      admission_(groups, limits, metrics),
      keys_(std::move(keys)),
      metrics_(metrics),
      role_(role),
      forwarder_(forwarder),
      activation_budget_(activation_budget) {}

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

absl::StatusOr<std::vector<RouterService::Output>> RouterService::Start(const ServedModel& model,
                                                                         const v1::GenerateRequest& request,
                                                                         const char* endpoint,
                                                                         std::function<void()> notify) {
  RequestAdmission::Origin origin{.protocol = "grpc", .endpoint = endpoint, .notify = std::move(notify)};
  std::vector<Output> outputs;
  absl::StatusOr<std::vector<v1::GenerateRequest>> parts = SplitInputs(request);
  absl::Status refused = parts.status();
  for (size_t i = 0; refused.ok() && i < parts->size(); ++i) {
    auto samples = admission_.AdmitSamples(model, (*parts)[i], origin);
    if (!samples.ok()) {
      refused = request.inputs_size() == 0 ? samples.status()
                                           : absl::Status(samples.status().code(),
                                                          absl::StrCat("inputs[", i, "]: ", samples.status().message()));
      break;
    }
    for (size_t j = 0; j < samples->size(); ++j) {
      outputs.push_back({static_cast<int32_t>(i), static_cast<int32_t>(j), (*samples)[j]});
    }
  }
  if (!refused.ok()) {
    for (const Output& o : outputs) o.request->Cancel();
    CountRejected(refused, endpoint);
    return refused;
  }
  return outputs;
}

namespace {

// A request with one input and one sample answers as before; any other lists its outputs in `completions` (a beam
// search lists its beams), the first repeated in the top-level fields.
v1::GenerateResponse Combine(const std::vector<v1::GenerateResponse>& parts, const std::vector<int32_t>& input_index,
                             const std::vector<int32_t>& index, bool several) {
  if (!several) return parts[0];
  v1::GenerateResponse out;
  for (size_t k = 0; k < parts.size(); ++k) {
    const v1::GenerateResponse& r = parts[k];
    if (r.completions_size() > 0) {
      for (v1::Completion c : r.completions()) {
        c.set_input_index(input_index[k]);
        *out.add_completions() = std::move(c);
      }
      continue;
    }
    v1::Completion* c = out.add_completions();
    c->set_input_index(input_index[k]);
    c->set_index(index[k]);
    c->set_text(r.text());
    *c->mutable_tokens() = r.tokens();
    c->set_finish_reason(r.finish_reason());
    *c->mutable_usage() = r.usage();
    c->set_seed(r.seed());
  }
  const v1::Completion& first = out.completions(0);
  out.set_text(first.text());
  *out.mutable_tokens() = first.tokens();
  out.set_finish_reason(first.finish_reason());
  *out.mutable_usage() = first.usage();
  out.set_seed(first.seed());
  return out;
}

}  // namespace

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
  auto outputs = Start(**model, *request, "Generate");
  if (!outputs.ok()) return ToGrpcStatus(outputs.status());
  Admitted(context);
  std::vector<v1::GenerateResponse> parts;
  std::vector<int32_t> input_index, index;
  for (const Output& o : *outputs) {
    if (auto s = Await(context, *o.request); !s.ok()) {
      for (const Output& other : *outputs) other.request->Cancel();
      return ToGrpcStatus(s);
    }
    parts.push_back(o.request->Response());
    input_index.push_back(o.input_index);
    index.push_back(o.index);
  }
  *response = Combine(parts, input_index, index, outputs->size() > 1 || request->inputs_size() > 0);
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
  // Several outputs are read as they come: each change wakes the handler.
  struct Wake {
    absl::Mutex mu;
    bool woken ABSL_GUARDED_BY(mu) = false;
  };
  auto wake = std::make_shared<Wake>();
  const bool several = request->inputs_size() > 0 || request->parameters().n() > 1;
  auto outputs = Start(**model, *request, "GenerateStream", several ? std::function<void()>([wake] {
    absl::MutexLock lock(&wake->mu);
    wake->woken = true;
  })
                                                                    : nullptr);
  if (!outputs.ok()) return ToGrpcStatus(outputs.status());
  Admitted(context);
  // Sent at once: should the connection to a forwarding router drop later, it knows this call ran here.
  if (role_ == ServiceRole::kPeer) writer->SendInitialMetadata();
  if (several) {
    auto cancel_all = [&] {
      for (const Output& o : *outputs) o.request->Cancel();
    };
    std::vector<bool> done(outputs->size(), false);
    size_t left = outputs->size();
    while (left > 0) {
      for (size_t k = 0; k < outputs->size(); ++k) {
        if (done[k]) continue;
        const Output& o = (*outputs)[k];
        bool finished = false;
        // A beam search's events carry their beam's rank already (its request has one sample).
        const bool beams = o.request->options().parameters.num_beams() > 0;
        for (v1::GenerateStreamResponse& event : o.request->TakeReady(&finished)) {
          if (event.has_token()) {
            event.mutable_token()->set_input_index(o.input_index);
            if (!beams) event.mutable_token()->set_index(o.index);
          } else {
            event.mutable_final()->set_input_index(o.input_index);
            if (!beams) event.mutable_final()->set_index(o.index);
          }
          if (context->IsCancelled() || !writer->Write(event)) {
            cancel_all();
            return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
          }
        }
        if (!finished) continue;
        done[k] = true;
        --left;
        if (absl::Status s = o.request->Wait(); !s.ok()) {
          cancel_all();
          return ToGrpcStatus(s);
        }
      }
      if (left == 0) break;
      absl::MutexLock lock(&wake->mu);
      wake->mu.AwaitWithTimeout(absl::Condition(&wake->woken), absl::Milliseconds(50));
      wake->woken = false;
      if (context->IsCancelled()) {
        cancel_all();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
      }
    }
    return grpc::Status::OK;
  }
  const std::shared_ptr<ActiveRequest>* active = &(*outputs)[0].request;
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
      const int64_t logits = WholeLogitsBytes(request, len, model.info.vocab_size());
      plan.bytes = logits + plan.activations.bytes;
      // Refused before it runs, as far as an estimate can tell (text pieces vary); Score checks the answer too.
      const int64_t bytes = ScoreResponseBytesEstimate(plan.activations, len, request.top_logprobs()) + logits +
                            static_cast<int64_t>(len) * std::max(0, request.top_logits()) * 32;
      if (logits + plan.activations.bytes > limits_.max_activation_bytes) {
        s = absl::ResourceExhaustedError(absl::StrCat(
            "the logits asked take ", logits, " bytes (a row of ", model.info.vocab_size(), " x 4 bytes per scored ",
            "position)", plan.activations.bytes > 0 ? absl::StrCat(" and the activations ", plan.activations.bytes) : "",
            "; the router's cap (--max_activation_bytes) is ", limits_.max_activation_bytes,
            ": ask top_logits 1..", StepRow::kMaxTopLogits, " instead, or score fewer tokens"));
      } else if (unary && (!plan.activations.points.empty() || request.top_logits() != 0) &&
                 bytes > limits_.max_message_bytes) {
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

namespace {

// A refusal of one of a request's inputs names it.
absl::Status ForInput(const absl::Status& s, size_t input, bool several) {
  if (s.ok() || !several) return s;
  return absl::Status(s.code(), absl::StrCat("inputs[", input, "]: ", s.message()));
}

}  // namespace

absl::StatusOr<std::vector<RouterService::ScoreRun>> RouterService::StartScores(grpc::ServerContext* context,
                                                                               const ServedModel& model,
                                                                               const v1::ScoreRequest& request,
                                                                               const char* endpoint, bool unary,
                                                                               const std::function<bool()>& forward) {
  auto parts = SplitInputs(request);
  if (!parts.ok()) {
    CountRejected(parts.status(), endpoint);
    return parts.status();
  }
  const bool several = request.inputs_size() > 0;
  std::vector<ScorePlan> plans;
  for (size_t i = 0; i < parts->size(); ++i) {
    auto plan = PrepareScore(model, (*parts)[i], endpoint, unary);
    if (!plan.ok()) return ForInput(plan.status(), i, several);
    plans.push_back(*std::move(plan));
  }
  if (activation_budget_ != nullptr) {
    // Each input is within --max_activation_bytes, but the inputs of one request are held together: a request that
    // could never fit the router-wide budget, even alone, is refused as such rather than told to retry.
    int64_t total = 0;
    for (const ScorePlan& p : plans) total += p.bytes;
    if (total > activation_budget_->capacity()) {
      const absl::Status too_big = absl::InvalidArgumentError(absl::StrCat(
          "the request's inputs ask for ", total, " bytes of activation data together, more than the router's "
          "budget for all requests at once (--max_activation_bytes_in_flight) of ", activation_budget_->capacity(),
          ": send fewer inputs per request"));
      CountRejected(too_big, endpoint);
      return too_big;
    }
  }
  std::vector<ScoreRun> runs;
  if (forward()) return runs;  // answered by a peer
  for (size_t i = 0; i < parts->size(); ++i) {
    const ActivationAsk ask = plans[i].activations;
    // Reserved before it runs, so the router never holds more than the budget however many requests come at once.
    std::shared_ptr<ActivationBudget::Lease> lease;
    if (activation_budget_ != nullptr) {
      auto reserved = activation_budget_->Reserve(plans[i].bytes);
      if (!reserved.ok()) {
        for (const ScoreRun& r : runs) r.active->Cancel();
        CountRejected(reserved.status(), endpoint);
        return ForInput(reserved.status(), i, several);
      }
      lease = *std::move(reserved);
    }
    auto active = AdmitScore(model, (*parts)[i], std::move(plans[i]), endpoint);
    if (!active.ok()) {
      for (const ScoreRun& r : runs) r.active->Cancel();
      return ForInput(active.status(), i, several);
    }
    runs.push_back({*std::move(active), ask, std::move(lease)});
  }
  Admitted(context);
  return runs;
}

grpc::Status RouterService::Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) {
  auto model = Enter(*context, "Score");
  if (!model.ok()) return ToGrpcStatus(model.status());
  grpc::Status forwarded_status;
  auto runs = StartScores(context, **model, *request, "Score", /*unary=*/true, [&] {
    auto peer = ForwardTarget();
    if (!peer) return false;
    const auto forwarded = forwarder_->Score(*peer, context, *request, response);
    if (!forwarded.place_here) {
      forwarded_status = forwarded.status;
      return true;
    }
    response->Clear();
    return false;
  });
  if (!runs.ok()) return ToGrpcStatus(runs.status());
  if (runs->empty()) return forwarded_status;
  bool large = false;
  for (ScoreRun& run : *runs) {
    if (auto s = Await(context, *run.active); !s.ok()) {
      for (const ScoreRun& r : *runs) r.active->Cancel();
      return ToGrpcStatus(s);
    }
    v1::ScoreResponse* out = request->inputs_size() > 0 ? response->add_results() : response;
    *out = run.active->ScoreResult();
    int32_t hidden = 0;
    std::vector<std::vector<float>> values = run.active->TakeActivations(&hidden);
    for (size_t i = 0; i < values.size(); ++i) {
      *out->add_activations() = EncodeActivation(run.ask, i, hidden, values[i]);
      std::vector<float>().swap(values[i]);  // held once, encoded or not
    }
    large = large || !run.ask.points.empty() || request->top_logits() != 0;
  }
  // The estimate let it run; the answer itself must fit too (long text pieces among the alternatives).
  if (const auto bytes = static_cast<int64_t>(response->ByteSizeLong()); large && bytes > limits_.max_message_bytes) {
    response->Clear();
    return ToGrpcStatus(TooLargeForScore(bytes, limits_.max_message_bytes));
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::ScoreStream(grpc::ServerContext* context, const v1::ScoreRequest* request,
                                        grpc::ServerWriter<v1::ScoreStreamResponse>* writer) {
  auto model = Enter(*context, "ScoreStream");
  if (!model.ok()) return ToGrpcStatus(model.status());
  grpc::Status forwarded_status;
  auto runs = StartScores(context, **model, *request, "ScoreStream", /*unary=*/false, [&] {
    auto peer = ForwardTarget();
    if (!peer) return false;
    const auto forwarded = forwarder_->ScoreStream(*peer, context, *request, writer);
    if (!forwarded.place_here) forwarded_status = forwarded.status;
    return !forwarded.place_here;
  });
  if (!runs.ok()) return ToGrpcStatus(runs.status());
  if (runs->empty()) return forwarded_status;
  if (role_ == ServiceRole::kPeer) writer->SendInitialMetadata();  // as GenerateStream: the sender sees it ran here
  for (size_t k = 0; k < runs->size(); ++k) {
    ScoreRun& run = (*runs)[k];
    const auto cancelled = [&] {
      for (const ScoreRun& r : *runs) r.active->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    };
    if (auto s = Await(context, *run.active); !s.ok()) {
      for (const ScoreRun& r : *runs) r.active->Cancel();
      return ToGrpcStatus(s);
    }
    v1::ScoreStreamResponse scores;
    *scores.mutable_scores() = run.active->ScoreResult();
    if (request->inputs_size() > 0) scores.set_input_index(static_cast<int32_t>(k));
    if (!writer->Write(scores)) return cancelled();
    int32_t hidden = 0;
    std::vector<std::vector<float>> values = run.active->TakeActivations(&hidden);
    for (size_t i = 0; i < values.size(); ++i) {
      v1::ScoreStreamResponse event;
      *event.mutable_activation() = EncodeActivation(run.ask, i, hidden, values[i]);
      std::vector<float>().swap(values[i]);
      if (request->inputs_size() > 0) event.set_input_index(static_cast<int32_t>(k));
      if (context->IsCancelled() || !writer->Write(event)) return cancelled();
    }
    run.lease.reset();  // its activations are sent: room for other requests while the next input streams
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
