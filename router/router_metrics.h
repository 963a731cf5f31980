// The router's Prometheus metrics (documented in monitoring/METRICS.md), served on its own port.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace gemma {

// Thread-safe (prometheus-cpp metrics are).
class RouterMetrics {
 public:
  // Serves /metrics on `address`; empty: record only.
  static absl::StatusOr<std::unique_ptr<RouterMetrics>> Create(const std::string& address);

  void FirstToken(double seconds_since_arrival) { ttft_->Observe(seconds_since_arrival); }
  void InterToken(double seconds) { itl_->Observe(seconds); }
  void Queued(double seconds) { queue_->Observe(seconds); }
  // `reason` (length, stop, eos, cancelled, failed) counts the request in gemma_router_requests_finished_total;
  // empty (a scoring request) does not.
  // `protocol` (grpc, http) and `endpoint` (the RPC or the HTTP path) label gemma_router_requests_total.
  // `adapter`, when not empty, also counts it per LoRA adapter.
  void Finished(const absl::Status& status, double seconds, int prompt_tokens, int generated_tokens,
                const std::string& reason, const std::string& protocol, const std::string& endpoint,
                const std::string& adapter = "");
  // From a request's first scheduled step to its first generated token.
  void Prefill(double seconds) { prefill_->Observe(seconds); }
  // Tokens (prompt positions and decoded tokens) one step computed.
  void StepTokens(int tokens) { step_tokens_->Observe(tokens); }
  // A step's wall time shared out by its prompt positions and its decoded tokens.
  void StepTime(double prefill_seconds, double decode_seconds) {
    step_prefill_seconds_->Increment(prefill_seconds);
    step_decode_seconds_->Increment(decode_seconds);
  }
  // The `group` label: the group's name when its workers give one (stable across restarts), else its address.
  static std::string GroupLabel(const std::string& group_name, const std::string& address) {
    return group_name.empty() ? address : group_name;
  }
  // Not admitted: bad request, full queue, no healthy group, or no valid API key; or (Cancelled, counted as
  // cancelled) the client left before its request could be admitted.
  void Rejected(const absl::Status& status, const std::string& protocol, const std::string& endpoint);
  void Preempted(int n) { preemptions_->Increment(n); }
  // KV windows: local-layer blocks given back because their positions left every window.
  void WindowReleased(int64_t blocks) { window_released_->Increment(static_cast<double>(blocks)); }
  // Per group, after each step.
  void GroupState(const std::string& group, int queued, int running, int kv_used, int kv_total, bool healthy);
  // Prefix cache, per step: prompt tokens that looked for a cached prefix and those found; blocks cached.
  void PrefixCache(const std::string& group, int64_t queried, int64_t hit, int cached_blocks);
  // Prompt positions computed by steps (a cached prefix is not computed again).
  void Prefilled(int64_t tokens) { prefill_tokens_->Increment(static_cast<double>(tokens)); }
  // Leases: whether this router schedules the group; a group taken over from another router; a request sent to
  // the peer router that schedules a group with room.
  void GroupOwned(const std::string& group, bool owned);
  void LeaseTakeover() { takeovers_->Increment(); }
  void Forwarded() { forwarded_->Increment(); }
  // Activation and logits bytes Score requests hold now (--max_activation_bytes_in_flight).
  void ActivationBytesInFlight(int64_t bytes) { activation_bytes_->Set(static_cast<double>(bytes)); }
  // A group the router no longer serves: its series end.
  void GroupGone(const std::string& group);

 private:
  RouterMetrics() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Histogram *ttft_, *itl_, *e2e_, *queue_, *prefill_, *prompt_hist_, *generated_hist_, *step_tokens_;
  prometheus::Family<prometheus::Counter>*requests_, *finished_, *adapter_requests_, *adapter_tokens_;
  prometheus::Counter *prompt_tokens_, *generated_tokens_, *preemptions_, *prefill_tokens_, *prefix_queries_,
      *prefix_hits_, *takeovers_, *forwarded_, *window_released_,
      *step_prefill_seconds_, *step_decode_seconds_;
  prometheus::Gauge* activation_bytes_;
  prometheus::Family<prometheus::Gauge>*queue_depth_, *running_, *kv_used_, *kv_usage_, *healthy_, *prefix_blocks_, *owned_;
};

}  // namespace gemma
