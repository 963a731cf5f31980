#include "router/worker_group.h"

#include "engine/cache_salt.h"
#include "engine/status_macros.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include <unistd.h>

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

SchedulerLimits ClampToWorker(SchedulerLimits limits, const worker::v1::ModelInfo& info) {
  // 0: a worker that reports none (it predates them; refused by the protocol check anyway).
  if (info.max_batch_size() > 0) limits.max_batch_size = std::min(limits.max_batch_size, info.max_batch_size());
  if (info.max_tokens_per_step() > 0) {
    limits.max_tokens_per_step = std::min(limits.max_tokens_per_step, info.max_tokens_per_step());
  }
  // The adapters a step may hold are the worker's alone (0: any number).
  limits.max_adapters_per_step = info.max_loras_per_step();
  return limits;
}

std::string NewRouterId() {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  std::random_device random;
  return absl::StrCat(host, "-", ::getpid(), "-", absl::Hex(random() ^ (uint64_t{random()} << 32)));
}

// Why a group's model info cannot be served next to `served` (another model, or another protocol); empty if it can.
std::string Incompatible(const worker::v1::ModelInfo& info, const worker::v1::ModelInfo& served) {
  const uint32_t ours = worker::v1::PROTOCOL_VERSION_CURRENT;
  if (info.protocol_version() != ours) {
    return absl::StrCat("speaks worker protocol ", info.protocol_version(), " and this router speaks ", ours,
                        "; run routers and workers of the same release (see docs/DEPLOY.md, upgrades)");
  }
  if (info.vocab_size() != served.vocab_size() || info.tokenizer_model() != served.tokenizer_model()) {
    return "serves another model than the one it served before";
  }
  // The router checks request lengths against the context its groups reported when they joined.
  if (info.max_model_len() != served.max_model_len()) {
    return absl::StrCat("takes contexts of ", info.max_model_len(), " positions (--max_model_len), ",
                        served.max_model_len(), " before");
  }
  return "";
}

absl::StatusOr<std::unique_ptr<WorkerGroup>> WorkerGroup::Connect(const std::string& address, GroupOptions options,
                                                                   std::chrono::milliseconds timeout,
                                                                   RouterMetrics* metrics, bool wait_for_ready) {
  // A step's answer carries the activations its rows read (tens of MB for a long prompt of a real model): gRPC's
  // default 4 MiB would fail the step, and the group with it. The router caps what a request may read.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  auto stub = worker::v1::Worker::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  ctx.set_wait_for_ready(wait_for_ready);
  worker::v1::ModelInfo info;
  const grpc::Status s = stub->GetModelInfo(&ctx, {}, &info);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("worker group ", address, " did not answer: ", s.error_message()));
  }
  if (const std::string why = Incompatible(info, info); !why.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("worker group ", address, " ", why));
  }
  return std::unique_ptr<WorkerGroup>(
      new WorkerGroup(address, std::move(channel), std::move(info), options, metrics));
}

WorkerGroup::WorkerGroup(std::string address, std::shared_ptr<grpc::Channel> channel, worker::v1::ModelInfo info,
                         GroupOptions options, RouterMetrics* metrics)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      stub_(worker::v1::Worker::NewStub(channel_)),
      info_(std::move(info)),
      metrics_(metrics),
      max_outstanding_(options.limits.max_queued + options.limits.max_batch_size),
      options_(options),
      executor_(stub_.get(), std::chrono::seconds(120)),
      engine_(NewEngine(info_)),
      probe_delay_(kFirstProbe),
      next_health_(std::chrono::steady_clock::now() + kIdleHealthEvery) {
  SetAdapters(info_);
  // The first group a router meets it takes at once, so a router alone serves as soon as it starts; one that
  // holds groups already waits a little, so that routers starting together spread the groups between them.
  const int held = options_.lease.held->load();
  next_lease_ = std::chrono::steady_clock::now();
  if (held > 0) next_lease_ += LeaseRetryDelay(held);
  MaintainLease(/*info_fresh=*/true);
  thread_ = std::thread([this] { Loop(); });
}

WorkerGroup::~WorkerGroup() {
  stop_ = true;
  executor_.Cancel();
  { absl::MutexLock lock(&mu_); }  // wakes the group's thread: its wait re-evaluates HasWork() on release
  thread_.join();
  ReleaseLease();
  if (metrics_ != nullptr) metrics_->GroupGone(RouterMetrics::GroupLabel(info_.group_name(), address_));
}

void WorkerGroup::MaintainLease(bool info_fresh) {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_lease_) return;
  const LeaseOptions& o = options_.lease;
  if (draining_ && !owned_) {  // shutting down: keep only what still runs (the loop waits until next_lease_)
    next_lease_ = now + o.ttl;
    return;
  }
  const auto poll = std::min<std::chrono::milliseconds>(o.ttl / 2, std::chrono::milliseconds(1000));
  worker::v1::LeaseRequest req;
  req.set_router_id(o.router_id);
  req.set_router_address(o.advertise);
  req.set_protocol_version(worker::v1::PROTOCOL_VERSION_CURRENT);
  req.set_ttl_ms(static_cast<int32_t>(o.ttl.count()));
  req.set_load(std::max(0, load_.load()));
  // A router that shuts down takes nothing new: peers must not forward to it.
  req.set_capacity(draining_ ? 0 : max_outstanding_);
  req.set_wants_group(o.held->load() == 0);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::min<std::chrono::milliseconds>(o.ttl / 3, poll));
  worker::v1::LeaseState state;
  const grpc::Status s = stub_->AcquireLease(&ctx, req, &state);
  if (!s.ok()) {
    // Unreachable, or refused: a group that is down is found by its steps and health; this router keeps what it
    // holds until the worker fences it, and tries again soon.
    next_lease_ = now + poll / 2;
    const std::string error = absl::StrCat(s.error_code(), ": ", s.error_message());
    if (error != lease_error_ && s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      std::fprintf(stderr, "gemma-router: worker group %s refused its lease: %s\n", address_.c_str(),
                   s.error_message().c_str());
    }
    lease_error_ = error;
    return;
  }
  lease_error_.clear();
  group_draining_ = state.draining();
  if (state.granted()) {
    // Granted under another epoch while this router thought it held the group: someone held it in between.
    if (owned_ && state.epoch() != epoch_) {
      LoseLease(absl::StrCat("its epoch moved from ", epoch_, " to ", state.epoch(), " while this router was away"));
    }
    // Not one whose worker now serves something else (it may have restarted since this router read its model
    // info): give it straight back.
    if (!owned_ && !info_fresh && !RefreshInfo()) {
      SendRelease();
      next_lease_ = now + o.ttl;
      return;
    }
    if (!owned_) {
      bool takeover;
      {
        absl::MutexLock lock(&peer_mu_);
        takeover = !peer_.holder_id().empty();
        peer_.Clear();
      }
      if (metrics_ != nullptr && takeover) metrics_->LeaseTakeover();
      epoch_ = state.epoch();
      executor_.set_epoch(epoch_);
      engine_ = NewEngine(engine_info_);
      SetAdapters(engine_info_);
      names_version_seen_ = ~uint64_t{0};
      owned_ = true;
      ++*o.held;
      std::fprintf(stderr, "gemma-router: schedules worker group %s (lease epoch %llu)\n", address_.c_str(),
                   static_cast<unsigned long long>(epoch_));
    }
    next_lease_ = now + o.ttl / 3;
    const bool idle = requests_.empty() && load_ == 0;
    if (idle && (draining_ || (state.wanted() && ClaimGiveBack()))) {
      // Shutting down, or a router that holds no group wants one while this one holds several: hand it over
      // (when it is idle, so nothing is cut), and wait a ttl before asking again.
      std::fprintf(stderr, "gemma-router: gives worker group %s back (%s)\n", address_.c_str(),
                   draining_ ? "shutting down" : "a router without groups wants one");
      if (draining_) {
        ReleaseLease();
      } else {
        owned_ = false;  // held was counted down by ClaimGiveBack
        SendRelease();
      }
      next_lease_ = now + o.ttl;
    }
    return;
  }
  if (owned_) LoseLease(absl::StrCat("router ", state.holder_id(), " holds it now"));
  {
    absl::MutexLock lock(&peer_mu_);
    peer_ = state;
  }
  // Holding some groups already, wait longer: a router that holds none takes a freed group first.
  next_lease_ = now + LeaseRetryDelay(o.held->load());
}

bool WorkerGroup::ClaimGiveBack() {
  // Groups renew on their own threads: counting down first, and only while more than one is held, keeps two idle
  // groups renewing at once from both going and leaving this router with none.
  int held = options_.lease.held->load();
  while (held > 1) {
    if (options_.lease.held->compare_exchange_weak(held, held - 1)) return true;
  }
  return false;
}

std::chrono::milliseconds WorkerGroup::LeaseRetryDelay(int held) const {
  const auto poll = std::min<std::chrono::milliseconds>(options_.lease.ttl / 2, std::chrono::milliseconds(1000));
  return poll + poll / 2 * std::min(held, 8);
}

void WorkerGroup::LoseLease(const std::string& why) {
  std::fprintf(stderr, "gemma-router: lost the lease of worker group %s: %s\n", address_.c_str(), why.c_str());
  owned_ = false;
  --*options_.lease.held;
  MoveOrFailAll(absl::UnavailableError(
      absl::StrCat("another router took over worker group ", address_, " (", why, "); retry")));
  epoch_ = 0;
  executor_.set_epoch(0);
  engine_ = NewEngine(engine_info_);
  SetAdapters(engine_info_);
  next_lease_ = std::chrono::steady_clock::now();
}

bool WorkerGroup::RefreshInfo(const char* refusal) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  worker::v1::ModelInfo info;
  if (!stub_->GetModelInfo(&ctx, {}, &info).ok()) return false;
  if (const std::string why = Incompatible(info, info_); !why.empty()) {
    std::fprintf(stderr, "gemma-router: worker group %s %s; %s\n", address_.c_str(), why.c_str(), refusal);
    return false;
  }
  engine_info_ = std::move(info);
  return true;
}

void WorkerGroup::ReleaseLease() {
  if (!owned_) return;
  owned_ = false;
  --*options_.lease.held;
  SendRelease();
}

void WorkerGroup::SendRelease() {
  worker::v1::LeaseRequest req;
  req.set_router_id(options_.lease.router_id);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  worker::v1::LeaseState state;
  stub_->ReleaseLease(&ctx, req, &state);  // best effort: otherwise the lease lapses after its ttl
}

std::optional<PeerHolder> WorkerGroup::peer() const {
  if (owned_ || !healthy_) return std::nullopt;
  absl::MutexLock lock(&peer_mu_);
  if (peer_.holder_address().empty() || peer_.draining()) return std::nullopt;
  return PeerHolder{peer_.holder_address(), peer_.holder_load(), peer_.holder_capacity()};
}

std::unique_ptr<Engine> WorkerGroup::NewEngine(const worker::v1::ModelInfo& info) {
  engine_info_ = info;
  EngineOptions o;
  o.limits = ClampToWorker(options_.limits, info);
  if (o.limits.max_batch_size != options_.limits.max_batch_size ||
      o.limits.max_tokens_per_step != options_.limits.max_tokens_per_step) {
    const std::string clamped = absl::StrCat(o.limits.max_batch_size, "/", o.limits.max_tokens_per_step);
    if (clamped != clamp_logged_) {
      std::fprintf(stderr,
                   "gemma-router: worker group %s takes at most %d sequences and %d tokens per step: its steps keep "
                   "to %d sequences (--max_batch_size %d) and %d tokens (--max_tokens_per_step %d)\n",
                   address_.c_str(), info.max_batch_size(), info.max_tokens_per_step(), o.limits.max_batch_size,
                   options_.limits.max_batch_size, o.limits.max_tokens_per_step, options_.limits.max_tokens_per_step);
      clamp_logged_ = clamped;
    }
  }
  o.num_blocks = info.num_kv_blocks();
  o.block_size = info.kv_block_size();
  o.kv_window = {info.kv_window(), info.kv_local_groups()};
  o.prefix_cache = options_.prefix_cache;
  o.overlap = options_.overlap_steps;
  block_size_ = info.kv_block_size();
  return std::make_unique<Engine>(o, &executor_);
}

void WorkerGroup::SetAdapters(const worker::v1::ModelInfo& info) {
  absl::MutexLock lock(&adapters_mu_);
  adapters_.clear();
  for (const auto& a : info.adapters()) adapters_[a.name()] = a;
}

absl::StatusOr<worker::v1::AdapterInfo> WorkerGroup::LoadAdapter(const std::string& name, const std::string& path) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));  // a large adapter on a slow disk
  worker::v1::LoadAdapterRequest req;
  req.set_name(name);
  req.set_path(path);
  worker::v1::AdapterInfo info;
  if (grpc::Status s = stub_->LoadAdapter(&ctx, req, &info); !s.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("worker group ", address_, ": ", s.error_message()));
  }
  absl::MutexLock lock(&adapters_mu_);
  adapters_[name] = info;
  return info;
}

absl::Status WorkerGroup::UnloadAdapter(const std::string& name) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::UnloadAdapterRequest req;
  req.set_name(name);
  worker::v1::UnloadAdapterResponse resp;
  grpc::Status s = stub_->UnloadAdapter(&ctx, req, &resp);
  // The record goes only when the worker no longer holds the adapter: after a failed call it may still serve it,
  // and forgetting it here would leave an adapter on the worker that no Unload could reach.
  if (s.ok() || s.error_code() == grpc::StatusCode::NOT_FOUND) {
    absl::MutexLock lock(&adapters_mu_);
    adapters_.erase(name);
  }
  if (!s.ok() && s.error_code() != grpc::StatusCode::NOT_FOUND) {  // NOT_FOUND: not held there, as asked
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                        absl::StrCat("worker group ", address_, ": ", s.error_message()));
  }
  return absl::OkStatus();
}

std::vector<worker::v1::AdapterInfo> WorkerGroup::adapters() const {
  absl::MutexLock lock(&adapters_mu_);
  std::vector<worker::v1::AdapterInfo> out;
  for (const auto& [name, a] : adapters_) out.push_back(a);
  return out;
}

bool WorkerGroup::HasAdapter(const std::string& name) const {
  absl::MutexLock lock(&adapters_mu_);
  return adapters_.count(name) > 0;
}

std::optional<std::string> WorkerGroup::AdapterPath(const std::string& name) const {
  absl::MutexLock lock(&adapters_mu_);
  auto it = adapters_.find(name);
  if (it == adapters_.end()) return std::nullopt;
  return it->second.path();
}

absl::StatusOr<SequenceSpec> WorkerGroup::SpecFor(const ActiveRequest& r) const {
  const ActiveRequest::Options& o = r.options();
  SequenceSpec spec;
  spec.interventions = o.interventions;
  if (!o.adapter.empty()) {
    absl::MutexLock lock(&adapters_mu_);
    auto it = adapters_.find(o.adapter);
    if (it == adapters_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter \"", o.adapter, "\" is not loaded on worker group ", address_));
    }
    spec.adapter = it->second.id();
  }
  // Ids are never reused by a worker, so a reloaded name never meets the KV its predecessor left.
  spec.cache_salt = ModelChangesCacheSalt(spec.adapter, spec.interventions);
  spec.prompt = o.prompt;
  spec.max_new_tokens = o.max_new_tokens;
  spec.score = o.score;
  spec.score_targets = o.score_targets;
  spec.score_logits = o.score_logits;
  spec.activations = o.activations;
  spec.activation_positions = o.activation_positions;
  spec.stop_ids = o.stop_ids;
  spec.constraint = o.constraint;
  const auto& p = o.parameters;
  spec.sampling.temperature = p.temperature();
  spec.sampling.top_k = p.top_k();
  spec.sampling.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  spec.sampling.seed = o.seed;
  spec.sampling.repetition_penalty = p.repetition_penalty() == 0.0f ? 1.0f : p.repetition_penalty();
  spec.sampling.presence_penalty = p.presence_penalty();
  spec.sampling.frequency_penalty = p.frequency_penalty();
  spec.top_logprobs = o.score ? o.score_top_logprobs : p.top_logprobs();
  spec.fork_of = o.fork_of;
  if (p.num_beams() > 0) {
    // A beam ends at the model's own stops too (other requests end there by the request's rule).
    spec.beams = {p.num_beams(), p.has_length_penalty() ? p.length_penalty() : 1.0f, p.early_stopping()};
    spec.stop_ids.insert(spec.stop_ids.end(), o.eos_ids.begin(), o.eos_ids.end());
  }
  return spec;
}

absl::Status WorkerGroup::AddToEngine(const ActiveRequest& r) {
  ASSIGN_OR_RETURN(SequenceSpec spec, SpecFor(r));
  return engine_->Add(r.id(), std::move(spec));
}

absl::Status WorkerGroup::Submit(std::shared_ptr<ActiveRequest> request) {
  if (draining_) return absl::UnavailableError("the router is shutting down; retry");
  if (!healthy_) return absl::UnavailableError(absl::StrCat("worker group ", address_, " is down"));
  if (!owned_) return absl::UnavailableError(absl::StrCat("another router schedules worker group ", address_));
  if (group_draining_) return absl::UnavailableError(absl::StrCat("worker group ", address_, " is shutting down"));
  absl::MutexLock lock(&mu_);
  if (load_ >= max_outstanding_) {
    return absl::ResourceExhaustedError(absl::StrCat("the queue is full (", max_outstanding_,
                                                     " requests queued or running); retry later"));
  }
  incoming_.push_back(std::move(request));
  ++load_;
  return absl::OkStatus();
}

void WorkerGroup::SetReroute(Reroute reroute) {
  absl::MutexLock lock(&mu_);
  reroute_ = std::move(reroute);
}

void WorkerGroup::Drain() {
  draining_ = true;
  { absl::MutexLock lock(&mu_); }  // wakes the group's thread: its wait re-evaluates HasWork() on release
}

void WorkerGroup::MoveOrFail(std::vector<std::shared_ptr<ActiveRequest>> requests, const absl::Status& failed) {
  Reroute reroute;
  {
    absl::MutexLock lock(&mu_);
    reroute = reroute_;
  }
  for (auto& r : requests) {
    --load_;
    // Not under mu_: the reroute submits to another group, which may be submitting to this one.
    absl::Status s = failed;
    if (reroute && r->ResetForRetry()) s = reroute(r);
    if (!s.ok()) r->Fail(s);
  }
}

void WorkerGroup::MoveOrFailAll(const absl::Status& failed) {
  std::vector<std::shared_ptr<ActiveRequest>> moved;
  engine_->RemoveAll();
  for (auto& [id, r] : requests_) moved.push_back(std::move(r));
  requests_.clear();
  {
    absl::MutexLock lock(&mu_);
    moved.insert(moved.end(), incoming_.begin(), incoming_.end());
    incoming_.clear();
  }
  MoveOrFail(std::move(moved), failed);
}

std::vector<std::shared_ptr<ActiveRequest>> WorkerGroup::TakeUnscheduled() {
  std::vector<std::shared_ptr<ActiveRequest>> taken;
  {
    absl::MutexLock lock(&mu_);
    taken.swap(incoming_);
  }
  for (auto it = requests_.begin(); it != requests_.end();) {
    if (it->second->scheduled()) {
      ++it;
      continue;
    }
    engine_->Remove(it->first);
    taken.push_back(std::move(it->second));
    it = requests_.erase(it);
  }
  return taken;
}

void WorkerGroup::FailUnscheduled(const absl::Status& status) {
  for (auto& r : TakeUnscheduled()) {
    r->Fail(status);
    --load_;
  }
}

void WorkerGroup::MoveUnscheduled() {
  MoveOrFail(TakeUnscheduled(),
             absl::UnavailableError(absl::StrCat("worker group ", address_, " is shutting down; retry")));
}

void WorkerGroup::FailOrphans() {
  for (auto& [id, r] : requests_) r->Fail(absl::InternalError("the router lost track of the request; retry"));
  load_ -= static_cast<int>(requests_.size());
  requests_.clear();
}

void WorkerGroup::FailAll(const absl::Status& status) {
  engine_->RemoveAll();
  for (auto& [id, r] : requests_) r->Fail(status);
  load_ -= static_cast<int>(requests_.size());
  requests_.clear();
  absl::MutexLock lock(&mu_);
  for (auto& r : incoming_) r->Fail(status);
  load_ -= static_cast<int>(incoming_.size());
  incoming_.clear();
}

int WorkerGroup::CachedPrefixBlocks(const std::vector<uint64_t>& prefix_hashes, int block_size) const {
  if (block_size != block_size_) return 0;  // named for another incarnation's block size
  absl::MutexLock lock(&names_mu_);
  for (size_t i = 0; i < prefix_hashes.size(); ++i) {
    if (!cached_names_.contains(prefix_hashes[i])) return static_cast<int>(i);
  }
  return static_cast<int>(prefix_hashes.size());
}

void WorkerGroup::PublishState() {
  const Scheduler& s = engine_->scheduler();
  if (s.blocks().names_version() != names_version_seen_) {
    names_version_seen_ = s.blocks().names_version();
    const std::vector<uint64_t> names = s.blocks().Names();
    absl::flat_hash_set<uint64_t> copy(names.begin(), names.end());  // built outside the lock Submit waits on
    absl::MutexLock lock(&names_mu_);
    cached_names_.swap(copy);
  }
  if (metrics_ == nullptr) return;
  const std::string group = RouterMetrics::GroupLabel(info_.group_name(), address_);
  for (int tokens : engine_->TakeStepTokens()) metrics_->StepTokens(tokens);
  metrics_->GroupState(group, s.queued(), s.running(), s.blocks().used_blocks(), s.blocks().num_blocks(), healthy_);
  metrics_->GroupOwned(group, owned_);
  metrics_->Preempted(static_cast<int>(s.preemptions() - preemptions_seen_));
  preemptions_seen_ = s.preemptions();
  metrics_->WindowReleased(s.blocks().window_released_blocks() - window_released_seen_);
  window_released_seen_ = s.blocks().window_released_blocks();
  metrics_->PrefixCache(group, s.prefix_query_tokens() - prefix_queried_seen_,
                        s.prefix_hit_tokens() - prefix_hit_seen_, s.blocks().cached_blocks());
  prefix_queried_seen_ = s.prefix_query_tokens();
  prefix_hit_seen_ = s.prefix_hit_tokens();
  metrics_->Prefilled(engine_->prefilled_tokens() - prefilled_seen_);
  prefilled_seen_ = engine_->prefilled_tokens();
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
  if (!Serving(std::chrono::seconds(1)) || !RefreshInfo("not taking it back")) return;
  // A new incarnation: empty KV pool, possibly of another size, and a lease to take again.
  engine_ = NewEngine(engine_info_);
  SetAdapters(engine_info_);
  if (owned_) {
    owned_ = false;
    --*options_.lease.held;
  }
  next_lease_ = now;
  group_draining_ = false;
  executor_.clear_group_draining();  // the last incarnation's word
  names_version_seen_ = ~uint64_t{0};
  preemptions_seen_ = prefix_queried_seen_ = prefix_hit_seen_ = prefilled_seen_ = window_released_seen_ = 0;
  probe_delay_ = kFirstProbe;
  next_health_ = now + kIdleHealthEvery;
  healthy_ = true;
}

void WorkerGroup::CheckIdleHealth() {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_health_) return;
  next_health_ = now + kIdleHealthEvery;
  if (Serving(std::chrono::seconds(1))) return;
  MarkDown();
}

void WorkerGroup::MarkDown() {
  healthy_ = false;
  next_probe_ = std::chrono::steady_clock::now() + kFirstProbe;
  // A group that is down is not counted as held: this router may want another one meanwhile, and must not give
  // a healthy one away because of it. Its lease is taken again when it comes back.
  if (owned_) {
    owned_ = false;
    --*options_.lease.held;
  }
}

bool WorkerGroup::HasWork() const {
  return stop_ || !incoming_.empty() || (draining_ && !drain_handled_);  // a drain wakes the loop once
}

void WorkerGroup::Loop() {
  while (!stop_) {
    if (draining_) {
      FailUnscheduled(absl::UnavailableError("the router is shutting down; retry"));
      drain_handled_ = true;  // wakes the loop's waits once; later arrivals are refused by Submit
    }
    if (!healthy_) {
      MoveOrFailAll(GroupFailed());  // requests submitted while it was being marked down
      ProbeRecovery();
      PublishState();
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(this, &WorkerGroup::HasWork),
                           absl::FromChrono(next_probe_ - std::chrono::steady_clock::now()));
      continue;
    }
    MaintainLease();
    if (!owned_) {
      MoveOrFailAll(absl::UnavailableError(absl::StrCat("another router schedules worker group ", address_)));
      PublishState();
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(this, &WorkerGroup::HasWork),
                           absl::FromChrono(next_lease_ - std::chrono::steady_clock::now()));
      continue;
    }
    if (group_draining_) MoveUnscheduled();
    {
      absl::MutexLock lock(&mu_);
      if (incoming_.empty() && requests_.empty()) {
        mu_.AwaitWithTimeout(absl::Condition(this, &WorkerGroup::HasWork),
                             absl::FromChrono(std::min(next_health_, next_lease_) - std::chrono::steady_clock::now()));
      }
      for (auto& r : incoming_) {
        // Two requests under one id would leave one unanswered: refuse the second loudly (a bug if it happens).
        const absl::Status s = requests_.contains(r->id())
                                   ? absl::InternalError(absl::StrCat("request id ", r->id(), " is already in use"))
                                   : AddToEngine(*r);
        if (!s.ok()) {
          r->Fail(s);
          --load_;
          continue;
        }
        requests_[r->id()] = std::move(r);
      }
      incoming_.clear();
    }
    // Cancelled requests leave before the next step, queued or running; their blocks are freed. The loop waits
    // only while it holds no request, so a cancel needs no wake-up: it is seen at most one step after it
    // happens (a handler notices its client left within 50 ms), and a queued request is never prefilled.
    for (auto it = requests_.begin(); it != requests_.end();) {
      if (it->second->cancelled()) {
        engine_->Remove(it->first);
        it->second->Fail(absl::CancelledError("the client cancelled the request"));
        --load_;
        it = requests_.erase(it);
      } else {
        ++it;
      }
    }
    if (requests_.empty() && engine_->idle()) {
      CheckIdleHealth();
    } else if (const absl::Status s = RunOneStep(); absl::IsAborted(s)) {
      LoseLease(std::string(s.message()));
    } else if (!s.ok()) {
      MarkDown();
      MoveOrFailAll(GroupFailed());
    } else {
      if (executor_.group_draining()) group_draining_ = true;  // what the step that just ran said
      if (engine_->idle() && !requests_.empty()) FailOrphans();
    }
    PublishState();
  }
  FailAll(absl::UnavailableError("the router is shutting down; retry"));
}

bool WorkerGroup::Deliver(const SequenceUpdate& u) {
  auto& r = requests_.at(u.id);
  bool finished = false;
  if (u.finish == FinishReason::kFailed) {
    r->Fail(u.error);
    finished = true;
  } else if (r->options().score) {
    std::vector<std::vector<std::pair<int32_t, float>>> top;
    for (const auto& position : u.score_top_logprobs) {
      auto& alternatives = top.emplace_back();
      for (const TokenLogprob& t : position) alternatives.emplace_back(t.token, t.logprob);
    }
    std::vector<std::vector<std::pair<int32_t, float>>> top_logits;
    for (const auto& position : u.score_top_logits) {
      auto& largest = top_logits.emplace_back();
      for (const TokenLogprob& t : position) largest.emplace_back(t.token, t.logprob);
    }
    r->OnScores(std::vector<float>(u.scores.begin(), u.scores.end()), std::move(top), std::move(top_logits),
                u.score_logits);
    if (absl::Status read = r->OnActivations(*u.result); !read.ok()) {
      r->Fail(read);
      finished = true;
    } else if (u.finish == FinishReason::kScored) {
      // A worker that left some asked positions unread must not answer OK with holes.
      if (absl::Status whole = r->ActivationsComplete(); !whole.ok()) {
        r->Fail(whole);
      } else {
        r->FinishScoring();
      }
      finished = true;
    }
  } else if (u.result == nullptr) {  // a beam search's answer
    finished = r->OnBeams(u.beams);
  } else if (u.result->sampled) {
    std::vector<std::pair<int32_t, float>> top;
    for (const auto& t : u.result->top_logprobs) top.emplace_back(t.token, t.logprob);
    finished = r->OnToken(u.result->token, u.result->logprob, top);
  }
  // The engine's stop rules and the request's agree on tokens and length; the request adds stop text. Should they
  // ever disagree, the request is failed rather than dropped unanswered.
  if (!finished && u.finish != FinishReason::kNone) {
    r->Fail(absl::InternalError("the engine ended the request before it finished"));
    finished = true;
  }
  if (finished) {
    requests_.erase(u.id);
    --load_;
  }
  return finished;
}

absl::Status WorkerGroup::GroupFailed() const {
  return absl::UnavailableError(absl::StrCat("worker group ", address_, " failed; retry"));
}

absl::Status WorkerGroup::RunOneStep() {
  if (stop_) return absl::CancelledError("the router is stopping");
  // A malformed row fails only its own request (the engine retries row by row); any other error is the group's.
  const int64_t prefilled_before = engine_->prefilled_tokens();
  const auto start = std::chrono::steady_clock::now();
  const absl::Status s = engine_->Step([this](const SequenceUpdate& u) { return Deliver(u); },
                                       [this](uint64_t id) { requests_.at(id)->MarkScheduled(); });
  if (s.ok() && metrics_ != nullptr && engine_->last_step_tokens() > 0) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double prefill_share =
        std::min(1.0, static_cast<double>(engine_->prefilled_tokens() - prefilled_before) / engine_->last_step_tokens());
    metrics_->StepTime(seconds * prefill_share, seconds * (1 - prefill_share));
  }
  if (!s.ok() && !stop_ && !absl::IsAborted(s)) {
    std::fprintf(stderr, "gemma-router: worker group %s failed: %s\n", address_.c_str(), s.ToString().c_str());
  }
  return s;
}

}  // namespace gemma
