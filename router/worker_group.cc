#include "router/worker_group.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "protos/grpc_status.h"

namespace gemma {

namespace {

// Probes of a group that is down: the first soon after it failed, then backing off (a group restarts in seconds;
// one gone for good costs a probe every few seconds).
constexpr std::chrono::milliseconds kFirstProbe(200);
constexpr std::chrono::milliseconds kMaxProbeDelay(4000);
// How often an idle group's health is checked.
constexpr std::chrono::milliseconds kIdleHealthEvery(2000);

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerGroup>> WorkerGroup::Connect(const std::string& address, SchedulerLimits limits,
                                                                   std::chrono::milliseconds timeout,
                                                                   RouterMetrics* metrics, bool wait_for_ready) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = worker::v1::Worker::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  ctx.set_wait_for_ready(wait_for_ready);
  worker::v1::ModelInfo info;
  const grpc::Status s = stub->GetModelInfo(&ctx, {}, &info);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("worker group ", address, " did not answer: ", s.error_message()));
  }
  return std::unique_ptr<WorkerGroup>(new WorkerGroup(address, std::move(channel), std::move(info), limits, metrics));
}

WorkerGroup::WorkerGroup(std::string address, std::shared_ptr<grpc::Channel> channel, worker::v1::ModelInfo info,
                         SchedulerLimits limits, RouterMetrics* metrics)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      stub_(worker::v1::Worker::NewStub(channel_)),
      info_(std::move(info)),
      metrics_(metrics),
      max_outstanding_(limits.max_queued + limits.max_batch_size),
      limits_(limits),
      scheduler_(std::make_unique<Scheduler>(limits, info_.num_kv_blocks(), info_.kv_block_size())),
      probe_delay_(kFirstProbe),
      next_health_(std::chrono::steady_clock::now() + kIdleHealthEvery) {
  thread_ = std::thread([this] { Loop(); });
}

WorkerGroup::~WorkerGroup() {
  stop_ = true;
  {
    std::lock_guard<std::mutex> lock(step_mu_);
    if (step_ != nullptr) step_->TryCancel();
  }
  cv_.notify_all();
  thread_.join();
  if (metrics_ != nullptr) metrics_->GroupGone(address_);
}

absl::Status WorkerGroup::Submit(std::shared_ptr<ActiveRequest> request) {
  if (draining_) return absl::UnavailableError("the router is shutting down; retry");
  if (!healthy_) return absl::UnavailableError(absl::StrCat("worker group ", address_, " is down"));
  std::lock_guard<std::mutex> lock(mu_);
  if (load_ >= max_outstanding_) {
    return absl::ResourceExhaustedError(absl::StrCat("the queue is full (", max_outstanding_,
                                                     " requests queued or running); retry later"));
  }
  incoming_.push_back(std::move(request));
  ++load_;
  cv_.notify_all();
  return absl::OkStatus();
}

void WorkerGroup::SetReroute(Reroute reroute) {
  std::lock_guard<std::mutex> lock(mu_);
  reroute_ = std::move(reroute);
}

void WorkerGroup::Drain() {
  draining_ = true;
  cv_.notify_all();
}

void WorkerGroup::MoveOrFail(std::vector<std::shared_ptr<ActiveRequest>> requests) {
  Reroute reroute;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reroute = reroute_;
  }
  const absl::Status failed = absl::UnavailableError(absl::StrCat("worker group ", address_, " failed; retry"));
  for (auto& r : requests) {
    --load_;
    // Not under mu_: the reroute submits to another group, which may be submitting to this one.
    absl::Status s = failed;
    if (reroute && r->ResetForRetry()) s = reroute(r);
    if (!s.ok()) r->Fail(s);
  }
}

void WorkerGroup::MoveOrFailAll() {
  std::vector<std::shared_ptr<ActiveRequest>> moved;
  for (auto& [id, r] : requests_) {
    scheduler_->Remove(id);
    moved.push_back(std::move(r));
  }
  requests_.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    moved.insert(moved.end(), incoming_.begin(), incoming_.end());
    incoming_.clear();
  }
  MoveOrFail(std::move(moved));
}

void WorkerGroup::FailUnscheduled(const absl::Status& status) {
  std::vector<std::shared_ptr<ActiveRequest>> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed.swap(incoming_);
  }
  for (auto it = requests_.begin(); it != requests_.end();) {
    if (it->second->scheduled()) {
      ++it;
      continue;
    }
    scheduler_->Remove(it->first);
    failed.push_back(std::move(it->second));
    it = requests_.erase(it);
  }
  for (auto& r : failed) {
    r->Fail(status);
    --load_;
  }
}

void WorkerGroup::FailOrphans() {
  for (auto& [id, r] : requests_) r->Fail(absl::InternalError("the router lost track of the request; retry"));
  load_ -= static_cast<int>(requests_.size());
  requests_.clear();
}

void WorkerGroup::FailAll(const absl::Status& status) {
  for (auto& [id, r] : requests_) {
    scheduler_->Remove(id);
    r->Fail(status);
  }
  load_ -= static_cast<int>(requests_.size());
  requests_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& r : incoming_) r->Fail(status);
  load_ -= static_cast<int>(incoming_.size());
  incoming_.clear();
}

void WorkerGroup::PublishState() {
  if (metrics_ == nullptr) return;
  metrics_->GroupState(address_, scheduler_->queued(), scheduler_->running(), scheduler_->blocks().used_blocks(),
                       scheduler_->blocks().num_blocks(), healthy_);
  metrics_->Preempted(static_cast<int>(scheduler_->preemptions() - preemptions_seen_));
  preemptions_seen_ = scheduler_->preemptions();
}

bool WorkerGroup::Serving(std::chrono::milliseconds timeout) {
  // Rank 0 of a broken group may still be up for a moment: its health (NOT_SERVING) says the group failed.
  grpc::ClientContext hctx;
  hctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest hreq;
  hreq.set_service("gemma.worker.v1.Worker");
  grpc::health::v1::HealthCheckResponse health;
  if (!grpc::health::v1::Health::NewStub(channel_)->Check(&hctx, hreq, &health).ok() ||
      health.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return false;
  }
  return true;
}

void WorkerGroup::ProbeRecovery() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_probe_) return;
  probe_delay_ = std::min(probe_delay_ * 2, kMaxProbeDelay);
  next_probe_ = now + probe_delay_;
  if (!Serving(std::chrono::seconds(1))) return;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  worker::v1::ModelInfo info;
  if (!stub_->GetModelInfo(&ctx, {}, &info).ok()) return;
  if (info.vocab_size() != info_.vocab_size() || info.tokenizer_model() != info_.tokenizer_model()) return;
  // A new incarnation: empty KV pool, possibly of another size.
  scheduler_ = std::make_unique<Scheduler>(limits_, info.num_kv_blocks(), info.kv_block_size());
  preemptions_seen_ = 0;
  probe_delay_ = kFirstProbe;
  next_health_ = now + kIdleHealthEvery;
  healthy_ = true;
}

void WorkerGroup::CheckIdleHealth() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_health_) return;
  next_health_ = now + kIdleHealthEvery;
  if (Serving(std::chrono::seconds(1))) return;
  healthy_ = false;
  next_probe_ = now + kFirstProbe;
}

void WorkerGroup::Loop() {
  while (!stop_) {
    if (draining_) FailUnscheduled(absl::UnavailableError("the router is shutting down; retry"));
    if (!healthy_) {
      MoveOrFailAll();  // requests submitted while it was being marked down
      ProbeRecovery();
      PublishState();
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_until(lock, next_probe_, [&] { return stop_ || !incoming_.empty(); });
      continue;
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (incoming_.empty() && requests_.empty()) {
        cv_.wait_until(lock, next_health_, [&] { return stop_ || !incoming_.empty(); });
      }
      for (auto& r : incoming_) {
        auto seq = std::make_unique<ScheduledSequence>();
        seq->id = r->id();
        seq->tokens = r->options().prompt;
        seq->prompt_len = static_cast<int32_t>(seq->tokens.size());
        seq->max_new_tokens = r->options().max_new_tokens;
        if (auto s = scheduler_->Enqueue(std::move(seq)); !s.ok()) {
          r->Fail(s);
          --load_;
          continue;
        }
        requests_[r->id()] = std::move(r);
      }
      incoming_.clear();
    }
    // Cancelled requests leave before the next step; their blocks are freed.
    for (auto it = requests_.begin(); it != requests_.end();) {
      if (it->second->cancelled()) {
        scheduler_->Remove(it->first);
        it->second->Fail(absl::CancelledError("the client cancelled the request"));
        --load_;
        it = requests_.erase(it);
      } else {
        ++it;
      }
    }
    if (requests_.empty()) {
      CheckIdleHealth();
    } else if (!RunOneStep()) {
      healthy_ = false;
      next_probe_ = std::chrono::steady_clock::now() + kFirstProbe;
      MoveOrFailAll();
    } else if (scheduler_->queued() + scheduler_->running() == 0) {
      FailOrphans();
    }
    PublishState();
  }
  FailAll(absl::UnavailableError("the router is shutting down; retry"));
}

bool WorkerGroup::RunOneStep() {
  const std::vector<PlannedSequence> plan = scheduler_->Schedule();
  if (plan.empty()) return true;
  worker::v1::StepRequest req;
  for (const PlannedSequence& p : plan) {
    ActiveRequest& r = *requests_.at(p.sequence->id);
    r.MarkScheduled();
    const auto& params = r.options().parameters;
    auto* s = req.add_sequences();
    s->set_sequence_id(p.sequence->id);
    s->mutable_tokens()->Add(p.sequence->tokens.begin() + p.start, p.sequence->tokens.begin() + p.start + p.count);
    s->set_start_pos(p.start);
    s->mutable_block_table()->Add(p.sequence->blocks.begin(), p.sequence->blocks.end());
    if (r.options().score) {
      s->set_top_logprobs(r.options().score_top_logprobs);
      for (int i = 0; i < p.count; ++i) {
        const int next = p.start + i + 1;
        s->add_score_targets(next < p.sequence->prompt_len ? p.sequence->tokens[next] : -1);
      }
      continue;
    }
    s->set_sample(p.sample);
    auto* sp = s->mutable_sampling();
    sp->set_temperature(params.temperature());
    sp->set_top_k(params.top_k());
    sp->set_top_p(params.top_p());
    sp->set_seed(r.options().seed);
    sp->set_repetition_penalty(params.repetition_penalty());
    sp->set_presence_penalty(params.presence_penalty());
    sp->set_frequency_penalty(params.frequency_penalty());
    s->set_top_logprobs(params.top_logprobs());
    if (params.repetition_penalty() != 0 || params.presence_penalty() != 0 || params.frequency_penalty() != 0) {
      s->mutable_penalty_history()->Add(p.sequence->tokens.begin(), p.sequence->tokens.end());
    }
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  {
    std::lock_guard<std::mutex> lock(step_mu_);
    if (stop_) return false;
    step_ = &ctx;
  }
  worker::v1::StepResponse resp;
  const grpc::Status status = stub_->Step(&ctx, req, &resp);
  {
    std::lock_guard<std::mutex> lock(step_mu_);
    step_ = nullptr;
  }
  if (!status.ok()) return false;
  for (size_t i = 0; i < plan.size(); ++i) {
    const PlannedSequence& p = plan[i];
    const auto& result = resp.results(static_cast<int>(i));
    auto& r = requests_.at(p.sequence->id);
    scheduler_->Advance(p, result.sampled() ? result.token() : -1);
    bool finished = false;
    if (r->options().score) {
      std::vector<float> lps(result.score_logprobs().begin(), result.score_logprobs().end());
      std::vector<std::vector<std::pair<int32_t, float>>> top;
      for (const auto& position : result.score_top_logprobs()) {
        top.emplace_back();
        for (const auto& t : position.alternatives()) top.back().emplace_back(t.token(), t.logprob());
      }
      if (p.start + p.count >= p.sequence->prompt_len) {  // the last position has no target
        if (!lps.empty()) lps.pop_back();
        if (!top.empty()) top.pop_back();
      }
      r->OnScores(lps, std::move(top));
      if (p.start + p.count >= p.sequence->prompt_len) {
        r->FinishScoring();
        finished = true;
      }
    } else if (result.sampled()) {
      std::vector<std::pair<int32_t, float>> top;
      for (const auto& t : result.top_logprobs()) top.emplace_back(t.token(), t.logprob());
      finished = r->OnToken(result.token(), result.logprob(), top);
    }
    if (finished) {
      const uint64_t id = p.sequence->id;  // Remove frees the sequence `p` points to
      scheduler_->Remove(id);
      requests_.erase(id);
      --load_;
    }
  }
  return true;
}

}  // namespace gemma
