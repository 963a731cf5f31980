#include "router/router_metrics.h"

#include "engine/status_macros.h"
#include "gemma/worker/v1/worker.pb.h"
#include "monitoring/build_info.h"
#include "monitoring/metrics_server.h"

#include "absl/strings/str_cat.h"

namespace gemma {
namespace {

// How a request ended, coarser than its gRPC code: what an operator alerts on.
const char* Outcome(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk: return "completed";
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded: return "cancelled";
    default: return "failed";
  }
}

// Powers of two up to the longest contexts (128k).
prometheus::Histogram::BucketBoundaries Tokens() {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 1; v <= 131072; v *= 2) b.push_back(v);
  return b;
}

prometheus::Histogram::BucketBoundaries Latency() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

}  // namespace

absl::StatusOr<std::unique_ptr<RouterMetrics>> RouterMetrics::Create(const std::string& address) {
  auto m = std::unique_ptr<RouterMetrics>(new RouterMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& r = *m->registry_;
  auto hist = [&](const char* name, const char* help) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, Latency());
  };
  m->ttft_ = hist("gemma_router_time_to_first_token_seconds", "From a request's arrival to its first generated token.");
  m->itl_ = hist("gemma_router_inter_token_latency_seconds", "Between consecutive generated tokens of one request.");
  m->e2e_ = hist("gemma_router_request_duration_seconds", "From a request's arrival to its end, any outcome.");
  m->queue_ = hist("gemma_router_queue_duration_seconds", "From a request's arrival to its first scheduled step.");
  m->prefill_ = hist("gemma_router_prefill_duration_seconds",
                     "From a request's first scheduled step to its first generated token.");
  auto tokens = [&](const char* name, const char* help) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, Tokens());
  };
  m->prompt_hist_ = tokens("gemma_router_prompt_tokens", "Prompt tokens of one generation request, when it ends.");
  m->generated_hist_ = tokens("gemma_router_generated_tokens", "Tokens one generation request generated, when it ends.");
  m->step_tokens_ = tokens("gemma_router_step_tokens", "Tokens one step computed (prompt positions and decodes).");
  m->finished_ = &prometheus::BuildCounter()
                      .Name("gemma_router_requests_finished_total")
                      .Help("Generation requests ended, by reason: length, stop, eos, cancelled, failed.")
                      .Register(r);
  AddBuildInfo(r, worker::v1::PROTOCOL_VERSION_CURRENT);
  m->requests_ = &prometheus::BuildCounter()
                      .Name("gemma_router_requests_total")
                      .Help("Requests ended, by outcome (completed, cancelled, failed, rejected), status code, protocol (grpc, http) and endpoint.")
                      .Register(r);
  m->adapter_requests_ = &prometheus::BuildCounter()
                              .Name("gemma_router_adapter_requests_total")
                              .Help("Requests that ran with a LoRA adapter, by adapter and outcome.")
                              .Register(r);
  m->adapter_tokens_ = &prometheus::BuildCounter()
                            .Name("gemma_router_adapter_tokens_total")
                            .Help("Prompt and generated tokens of requests that ran with a LoRA adapter, by adapter "
                                  "and kind (prompt, generated).")
                            .Register(r);
  m->prompt_tokens_ = &prometheus::BuildCounter().Name("gemma_router_prompt_tokens_total").Help("Prompt tokens of finished requests.").Register(r).Add({});
  m->generated_tokens_ = &prometheus::BuildCounter().Name("gemma_router_generated_tokens_total").Help("Tokens generated.").Register(r).Add({});
  m->preemptions_ = &prometheus::BuildCounter().Name("gemma_router_preemptions_total").Help("Sequences preempted for KV blocks (recomputed later).").Register(r).Add({});
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  m->prefill_tokens_ = counter("gemma_router_prefill_tokens_total",
                               "Prompt positions computed by steps; a cached prefix is not computed again.");
  m->prefix_queries_ = counter("gemma_router_prefix_cache_queries_total",
                               "Prompt tokens of admitted sequences that looked for a cached prefix.");
  m->prefix_hits_ = counter("gemma_router_prefix_cache_hits_total",
                            "Prompt tokens found in the prefix cache (their KV was reused, not computed).");
  m->window_released_ = counter("gemma_router_kv_window_released_blocks_total",
                                "KV blocks of sliding-window layers given back because their positions left the window.");
  m->takeovers_ = counter("gemma_router_lease_takeovers_total",
                          "Worker groups this router took over after another router's lease lapsed or was released.");
  m->step_prefill_seconds_ = counter("gemma_router_step_prefill_seconds_total",
                                     "Step time spent on prefill (a step's time shared out by its tokens).");
  m->step_decode_seconds_ = counter("gemma_router_step_decode_seconds_total",
                                    "Step time spent on decode (a step's time shared out by its tokens).");
  m->forwarded_ = counter("gemma_router_forwarded_requests_total",
                          "Requests this router sent to the peer router that schedules a group with room.");
  auto gauge = [&](const char* name, const char* help) { return &prometheus::BuildGauge().Name(name).Help(help).Register(r); };
  m->queue_depth_ = gauge("gemma_router_queue_depth", "Requests waiting for a first step, per worker group.");
  m->running_ = gauge("gemma_router_running_sequences", "Sequences in a group's running batch.");
  m->kv_used_ = gauge("gemma_router_kv_blocks_used", "KV-cache blocks held by a group's sequences.");
  m->kv_usage_ = gauge("gemma_router_kv_cache_usage_ratio", "Share of a group's KV-cache blocks in use.");
  m->healthy_ = gauge("gemma_router_group_healthy", "1 while a worker group serves, 0 while it is out.");
  m->owned_ = gauge("gemma_router_group_owned", "1 while this router holds the group's lease (schedules it), else 0.");
  m->prefix_blocks_ = gauge("gemma_router_prefix_cache_blocks", "KV blocks of a group named in its prefix cache.");
  m->activation_bytes_ =
      &gauge("gemma_router_activation_bytes_in_flight",
             "Activation and logits bytes that Score requests in flight hold (--max_activation_bytes_in_flight).")
           ->Add({});
  if (!address.empty()) {
    ASSIGN_OR_RETURN(m->exposer_, ServeMetrics(address, m->registry_));
  }
  return m;
}

void RouterMetrics::Finished(const absl::Status& status, double seconds, int prompt_tokens, int generated_tokens,
                             const std::string& reason, const std::string& protocol,
                             const std::string& endpoint, const std::string& adapter) {
  e2e_->Observe(seconds);
  if (!reason.empty()) {
    finished_->Add({{"reason", reason}}).Increment();
    prompt_hist_->Observe(prompt_tokens);
    generated_hist_->Observe(generated_tokens);
  }
  requests_
      ->Add({{"outcome", Outcome(status)},
             {"code", absl::StatusCodeToString(status.code())},
             {"protocol", protocol},
             {"endpoint", endpoint}})
      .Increment();
  prompt_tokens_->Increment(prompt_tokens);
  generated_tokens_->Increment(generated_tokens);
  if (!adapter.empty()) {
    adapter_requests_->Add({{"adapter", adapter}, {"outcome", Outcome(status)}}).Increment();
    adapter_tokens_->Add({{"adapter", adapter}, {"kind", "prompt"}}).Increment(prompt_tokens);
    adapter_tokens_->Add({{"adapter", adapter}, {"kind", "generated"}}).Increment(generated_tokens);
  }
}

void RouterMetrics::Rejected(const absl::Status& status, const std::string& protocol, const std::string& endpoint) {
  requests_
      ->Add({{"outcome", status.code() == absl::StatusCode::kCancelled ? "cancelled" : "rejected"},
             {"code", absl::StatusCodeToString(status.code())},
             {"protocol", protocol},
             {"endpoint", endpoint}})
      .Increment();
}

void RouterMetrics::GroupState(const std::string& group, int queued, int running, int kv_used, int kv_total,
                               bool healthy) {
  const std::map<std::string, std::string> l = {{"group", group}};
  queue_depth_->Add(l).Set(queued);
  running_->Add(l).Set(running);
  kv_used_->Add(l).Set(kv_used);
  kv_usage_->Add(l).Set(kv_total > 0 ? static_cast<double>(kv_used) / kv_total : 0.0);
  healthy_->Add(l).Set(healthy ? 1 : 0);
}

void RouterMetrics::PrefixCache(const std::string& group, int64_t queried, int64_t hit, int cached_blocks) {
  prefix_queries_->Increment(static_cast<double>(queried));
  prefix_hits_->Increment(static_cast<double>(hit));
  prefix_blocks_->Add({{"group", group}}).Set(cached_blocks);
}

void RouterMetrics::GroupOwned(const std::string& group, bool owned) {
  owned_->Add({{"group", group}}).Set(owned ? 1 : 0);
}

void RouterMetrics::GroupGone(const std::string& group) {
  const std::map<std::string, std::string> l = {{"group", group}};
  for (auto* family : {queue_depth_, running_, kv_used_, kv_usage_, healthy_, prefix_blocks_, owned_}) {
    family->Remove(&family->Add(l));
  }
}

}  // namespace gemma
