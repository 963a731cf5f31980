#include "router/remote_executor.h"

#include <cstring>

#include <grpcpp/grpcpp.h>

#include <random>

#include "absl/strings/str_cat.h"

namespace gemma {

namespace {

worker::v1::StepRequest ToRequest(std::span<const StepRow> rows) {
  worker::v1::StepRequest req;
  for (const StepRow& r : rows) {
    auto* s = req.add_sequences();
    s->set_sequence_id(r.sequence_id);
    s->mutable_tokens()->Add(r.tokens.begin(), r.tokens.end());
    s->set_start_pos(r.start_pos);
    s->set_token_from_last_step(r.token_from_last_step);
    s->mutable_block_table()->Add(r.block_table.begin(), r.block_table.end());
    s->mutable_local_block_table()->Add(r.local_block_table.begin(), r.local_block_table.end());
    s->set_local_block_begin(r.local_block_begin);
    s->mutable_score_targets()->Add(r.score_targets.begin(), r.score_targets.end());
    s->set_score_logits(r.score_logits);
    s->set_sample(r.sample);
    s->set_top_logprobs(r.top_logprobs);
    s->set_adapter(r.adapter);
    for (const Intervention& iv : r.interventions) {
      auto* o = s->add_interventions();
      o->set_kind(static_cast<worker::v1::Intervention::Kind>(iv.kind));
      o->set_layer(iv.layer);
      o->mutable_vector()->Add(iv.vector.begin(), iv.vector.end());
      o->set_factor(iv.factor);
      o->set_head(iv.head);
      o->set_begin_pos(iv.begin_pos);
      o->set_end_pos(iv.end_pos);
    }
    for (const ActivationPoint& p : r.activations) {
      auto* o = s->add_activations();
      o->set_kind(static_cast<worker::v1::ActivationPoint::Kind>(p.kind));
      o->set_index(p.index);
    }
    s->mutable_activation_positions()->Add(r.activation_positions.begin(), r.activation_positions.end());
    // A penalized sequence's prompt chunks carry its sampling too: the worker records their tokens.
    if (!r.sample && !r.sampling.has_penalties()) continue;
    auto* sp = s->mutable_sampling();
    sp->set_temperature(r.sampling.temperature);
    sp->set_top_k(r.sampling.top_k);
    sp->set_top_p(r.sampling.top_p);
    sp->set_seed(r.sampling.seed);
    sp->set_repetition_penalty(r.sampling.repetition_penalty);
    sp->set_presence_penalty(r.sampling.presence_penalty);
    sp->set_frequency_penalty(r.sampling.frequency_penalty);
    s->mutable_penalty_history()->Add(r.penalty_history.begin(), r.penalty_history.end());
    s->set_penalty_prompt_len(r.penalty_prompt_len);
    s->mutable_allowed_tokens()->Add(r.allowed_tokens.begin(), r.allowed_tokens.end());
  }
  return req;
}

}  // namespace

RemoteExecutor::RemoteExecutor(worker::v1::Worker::Stub* stub, std::chrono::milliseconds step_timeout)
    : stub_(stub), step_timeout_(step_timeout), session_(std::random_device{}() * 0x100000001ull ^ std::random_device{}()) {}

worker::v1::StepRequest RemoteExecutor::Number(std::span<const StepRow> rows, bool after_previous) {
  worker::v1::StepRequest req = ToRequest(rows);
  absl::MutexLock lock(&mu_);
  req.set_session(session_);
  req.set_epoch(epoch_);
  req.set_step_id(++last_step_);
  req.mutable_released_sequences()->Add(released_.begin(), released_.end());
  released_.clear();
  if (after_previous) req.set_after_step(last_step_ - 1);
  return req;
}

absl::StatusOr<std::vector<RowResult>> RemoteExecutor::Execute(std::span<const StepRow> rows) {
  return Send(Number(rows, false)).get();
}

std::future<absl::StatusOr<std::vector<RowResult>>> RemoteExecutor::Start(std::span<const StepRow> rows,
                                                                           bool after_previous) {
  return Send(Number(rows, after_previous));
}

// One call on the wire: what gRPC's callback needs to outlive the caller's stack.
struct RemoteExecutor::Pending {
  grpc::ClientContext ctx;
  worker::v1::StepRequest req;
  worker::v1::StepResponse resp;
  std::promise<absl::StatusOr<std::vector<RowResult>>> done;
};

std::future<absl::StatusOr<std::vector<RowResult>>> RemoteExecutor::Send(worker::v1::StepRequest req) {
  // gRPC's callback API: no thread of ours waits on the wire, so a step can be sent while another is out.
  auto* call = new Pending;
  call->req = std::move(req);
  call->ctx.set_deadline(std::chrono::system_clock::now() + step_timeout_);
  auto result = call->done.get_future();
  bool cancelled;
  {
    absl::MutexLock lock(&mu_);
    cancelled = cancelled_;
    if (!cancelled) in_flight_.insert(&call->ctx);
  }
  if (cancelled) {
    Unsend(call->req);
    call->done.set_value(absl::UnavailableError("the router is shutting down"));
    delete call;
    return result;
  }
  stub_->async()->Step(&call->ctx, &call->req, &call->resp, [this, call](grpc::Status status) {
    {
      absl::MutexLock lock(&mu_);
      in_flight_.erase(&call->ctx);
    }
    call->done.set_value(Finish(status, call->req, call->resp));
    delete call;
  });
  return result;
}

absl::StatusOr<std::vector<RowResult>> RemoteExecutor::Finish(const grpc::Status& status,
                                                              const worker::v1::StepRequest& req,
                                                              const worker::v1::StepResponse& resp) {
  if (status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
    return absl::InvalidArgumentError(status.error_message());
  }
  if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
    return absl::FailedPreconditionError(status.error_message());
  }
  if (status.error_code() == grpc::StatusCode::ABORTED) {
    Unsend(req);
    return absl::AbortedError(status.error_message());
  }
  if (!status.ok()) {
    Unsend(req);
    return absl::UnavailableError(absl::StrCat("the worker group's step failed: ", status.error_message()));
  }
  group_draining_ = resp.draining();
  std::vector<RowResult> out(resp.results_size());
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& r = resp.results(i);
    RowResult& o = out[i];
    o.sequence_id = r.sequence_id();
    o.sampled = r.sampled();
    o.token = r.token();
    o.logprob = r.logprob();
    for (const auto& t : r.top_logprobs()) o.top_logprobs.push_back({t.token(), t.logprob()});
    o.score_logprobs.assign(r.score_logprobs().begin(), r.score_logprobs().end());
    for (const auto& [from, to] : {std::pair{&r.score_top_logprobs(), &o.score_top_logprobs},
                                   std::pair{&r.score_top_logits(), &o.score_top_logits}}) {
      for (const auto& position : *from) {
        auto& top = to->emplace_back();
        for (const auto& t : position.alternatives()) top.push_back({t.token(), t.logprob()});
      }
    }
    o.score_logits.resize(r.score_logits().size() / sizeof(float));
    std::memcpy(o.score_logits.data(), r.score_logits().data(), o.score_logits.size() * sizeof(float));
    for (const std::string& bytes : r.activations()) {
      auto& a = o.activations.emplace_back(bytes.size() / sizeof(float));
      std::memcpy(a.data(), bytes.data(), a.size() * sizeof(float));
    }
    o.activation_rows = r.activation_rows();
  }
  return out;
}

void RemoteExecutor::Release(std::span<const uint64_t> ids) {
  absl::MutexLock lock(&mu_);
  released_.insert(released_.end(), ids.begin(), ids.end());
}

void RemoteExecutor::Unsend(const worker::v1::StepRequest& req) {
  absl::MutexLock lock(&mu_);
  UnsendLocked(req);
}

void RemoteExecutor::UnsendLocked(const worker::v1::StepRequest& req) {
  // The worker may not have heard of them; telling it again is harmless.
  released_.insert(released_.end(), req.released_sequences().begin(), req.released_sequences().end());
}

void RemoteExecutor::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (grpc::ClientContext* ctx : in_flight_) ctx->TryCancel();
}

}  // namespace gemma
