#include "worker/worker_service.h"

#include <chrono>
#include <set>

#include "absl/strings/str_cat.h"

#include "protos/grpc_status.h"
#include "worker/step_runner.h"

namespace gemma {
namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Marks a step running for its whole call, so a draining worker never leaves while one is waiting or running.
class StepActivity {
 public:
  StepActivity(std::atomic<int>* in_flight, std::atomic<int64_t>* last) : in_flight_(in_flight), last_(last) {
    ++*in_flight_;
    *last_ = SteadyNanos();
  }
  ~StepActivity() {
    *last_ = SteadyNanos();
    --*in_flight_;
  }

 private:
  std::atomic<int>* in_flight_;
  std::atomic<int64_t>* last_;
};

StepLimits LimitsOf(const worker::v1::ModelInfo& info) {
  StepLimits l;
  l.max_tokens = info.max_tokens_per_step();
  l.max_sequences = info.max_batch_size();
  l.max_context = info.max_model_len();
  return l;
}

}  // namespace

WorkerService::WorkerService(std::unique_ptr<LeaderBackend> backend, worker::v1::ModelInfo info, WorkerMetrics* metrics,
                             std::shared_ptr<AdapterStore> adapters)
    : info_(std::move(info)),
      lora_capacity_(backend->lora_capacity()),
      adapters_(std::move(adapters)),
      limits_(LimitsOf(info_)),
      metrics_(metrics),
      backend_(std::move(backend)) {}

namespace {

void ToProto(const AdapterInfo& a, worker::v1::AdapterInfo* out) {
  out->set_name(a.name);
  out->set_id(a.id);
  out->set_path(a.dir);
  out->set_rank(a.rank);
  out->set_scaling(a.scaling);
  for (const std::string& t : a.target_modules) out->add_target_modules(t);
}

}  // namespace

grpc::Status WorkerService::GetModelInfo(grpc::ServerContext*, const worker::v1::GetModelInfoRequest*,
                                         worker::v1::ModelInfo* response) {
  if (!healthy_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker group has failed; restart it");
  *response = info_;
  response->set_max_lora_rank(lora_capacity_.max_rank);
  response->set_max_loras_per_step(lora_capacity_.max_per_step);
  for (const AdapterInfo& a : adapters_->List()) ToProto(a, response->add_adapters());
  return grpc::Status::OK;
}

grpc::Status WorkerService::LoadAdapter(grpc::ServerContext*, const worker::v1::LoadAdapterRequest* request,
                                        worker::v1::AdapterInfo* response) {
  // Checked here, on the leader, before the adapter has an id: followers read an adapter only when a step names it.
  auto id = adapters_->Register(request->name(), request->path(),
                                [this](const LoraAdapter& a) { return CheckAdapterFits(lora_capacity_, a, kWorkerLoraFlags); });
  if (!id.ok()) return ToGrpcStatus(id.status());
  for (const AdapterInfo& a : adapters_->List()) {
    if (a.id == *id) ToProto(a, response);
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::UnloadAdapter(grpc::ServerContext*, const worker::v1::UnloadAdapterRequest* request,
                                          worker::v1::UnloadAdapterResponse*) {
  return ToGrpcStatus(adapters_->Unregister(request->name()));
}

void WorkerService::OnFailure(std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  on_failure_ = std::move(callback);
}

WorkerService::Session& WorkerService::SessionFor(uint64_t id) {
  constexpr size_t kSessions = 16;
  if (!sessions_.contains(id) && sessions_.size() >= kSessions) {
    auto oldest = sessions_.begin();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      if (it->second.used < oldest->second.used) oldest = it;
    }
    sessions_.erase(oldest);
  }
  return sessions_[id];
}

void WorkerService::MarkFailed() {
  if (healthy_.exchange(false) && on_failure_) on_failure_();
}

grpc::Status WorkerService::Step(grpc::ServerContext* context, const worker::v1::StepRequest* request,
                                 worker::v1::StepResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  StepActivity activity(&steps_in_flight_, &last_step_ns_);
  if (!healthy_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker group has failed; restart it");
  if (auto s = lease_.CheckEpoch(request->epoch()); !s.ok()) return ToGrpcStatus(s);  // refused before any wait
  absl::MutexLock lock(&mu_);
  if (request->after_step() > 0) {
    // Sent before the step it follows had answered: wait for that one to run (it may still be on the wire). A
    // session this worker does not know (it restarted, or dropped it) cannot be waited for: the router resends.
    if (!sessions_.contains(request->session())) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("step ", request->step_id(), " follows step ", request->after_step(),
                                       " of a router session this worker does not hold; send it on its own"));
    }
    const auto followed = [&] {
      mu_.AssertHeld();
      auto it = sessions_.find(request->session());
      return it == sessions_.end() || it->second.last_step >= request->after_step();
    };
    const auto done_waiting = [&] {
      mu_.AssertHeld();
      return followed() || !healthy_ || backend_ == nullptr;
    };
    // In slices, so that a cancelled call is seen; never past 10 minutes (a client without a deadline).
    const auto deadline = std::min(context->deadline(), std::chrono::system_clock::now() + std::chrono::minutes(10));
    while (!mu_.AwaitWithTimeout(absl::Condition(&done_waiting), absl::Milliseconds(100)) &&
           !context->IsCancelled() && std::chrono::system_clock::now() < deadline) {
    }
    if (!followed() && healthy_ && backend_ != nullptr) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrCat("step ", request->step_id(), " waited for step ", request->after_step(),
                                       ", which never came"));
    }
  }
  if (!healthy_ || backend_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker group has failed; restart it");
  }
  // Again, after waiting: the lease may have moved on meanwhile, and the KV pool is the new holder's.
  if (auto s = lease_.CheckStep(request->epoch()); !s.ok()) return ToGrpcStatus(s);
  Session& session = SessionFor(request->session());
  auto result = RunStep(*backend_, *request, &session.draws, &session.history, &limits_, adapters_.get());
  lease_.StepDone(request->epoch());
  // Whatever happened, later steps no longer wait for this one, and take only what it drew.
  session.last_step = std::max(session.last_step, request->step_id());
  session.used = ++steps_run_;
  session.draws.clear();
  if (result.ok()) {
    for (const auto& r : result->results()) {
      if (r.sampled()) session.draws[r.sequence_id()] = r.token();
    }
  }
  if (!result.ok()) {
    // A malformed row, or a penalty history this worker dropped: nothing ran and the group is fine.
    if (!absl::IsInvalidArgument(result.status()) && !absl::IsFailedPrecondition(result.status())) MarkFailed();
    metrics_->RecordFailure(result.status());
    return ToGrpcStatus(result.status());
  }
  *response = std::move(*result);
  response->set_draining(draining_);
  std::set<int32_t> blocks;
  int tokens = 0;
  for (const auto& s : request->sequences()) {
    blocks.insert(s.block_table().begin(), s.block_table().end());
    blocks.insert(s.local_block_table().begin(), s.local_block_table().end());
    tokens += s.token_from_last_step() ? 1 : s.tokens_size();
  }
  metrics_->RecordStep(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                       response->timings(), static_cast<int>(blocks.size()), request->sequences_size(), tokens);
  return grpc::Status::OK;
}

grpc::Status WorkerService::AcquireLease(grpc::ServerContext*, const worker::v1::LeaseRequest* request,
                                         worker::v1::LeaseState* response) {
  if (!healthy_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "this worker group has failed; restart it");
  auto state = lease_.Acquire(*request);
  if (!state.ok()) return ToGrpcStatus(state.status());
  *response = std::move(*state);
  return grpc::Status::OK;
}

grpc::Status WorkerService::ReleaseLease(grpc::ServerContext*, const worker::v1::LeaseRequest* request,
                                         worker::v1::LeaseState* response) {
  *response = lease_.Release(*request);
  return grpc::Status::OK;
}

grpc::Status WorkerService::GetLease(grpc::ServerContext*, const worker::v1::GetLeaseRequest*,
                                     worker::v1::LeaseState* response) {
  *response = lease_.Get();
  return grpc::Status::OK;
}

bool WorkerService::Heartbeat() {
  absl::MutexLock lock(&mu_);
  if (!healthy_ || backend_ == nullptr) return false;
  if (!backend_->Heartbeat().ok()) MarkFailed();
  return healthy_;
}

void WorkerService::StartDraining() {
  // A router may be between two steps of a running request when the signal comes: it gets a second to send one.
  last_step_ns_ = SteadyNanos();
  draining_ = true;
  lease_.SetDraining();  // no other router takes the group over while it winds down
}

bool WorkerService::Quiet(std::chrono::milliseconds quiet) const {
  return steps_in_flight_ == 0 && SteadyNanos() - last_step_ns_ >= std::chrono::nanoseconds(quiet).count();
}

void WorkerService::Stop() {
  absl::MutexLock lock(&mu_);
  backend_.reset();  // a step waiting for its predecessor sees it when the lock is released
}

}  // namespace gemma
