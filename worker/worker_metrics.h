// The worker's Prometheus metrics, served on its own port.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gemma/worker/v1/worker.pb.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "shard/runtime/step_limits.h"

namespace gemma {

// Thread-safe (prometheus-cpp metrics are).
class WorkerMetrics {
 public:
  // Serves /metrics on `address` ("0.0.0.0:9090"); empty: no exposer (metrics still recorded). Rank 0 alone
  // registers the group's series (steps, step sizes, limits, failures, health): on other ranks their recorders do
  // nothing.
  static absl::StatusOr<std::unique_ptr<WorkerMetrics>> Create(const std::string& address, int rank, int kv_blocks);
  void RecordStep(double step_seconds, const worker::v1::StepTimings& timings, int kv_blocks_in_use, int sequences,
                  int tokens);
  // This rank's own view of one step (every rank, followers too, so a straggler shows): its wall time from
  // receiving the step to finishing its shard, and the part spent in collectives.
  void RecordRankStep(double step_seconds, double collective_seconds);
  // gemma_worker_model_info{model, shape, tp, device} = 1.
  void SetModelInfo(const std::string& model, const std::string& shape, int tp, const std::string& device);
  // gemma_worker_step_limit{limit="tokens"|"sequences"|"context"}: the largest step, resolved, as routers see it.
  void SetStepLimits(const StepLimits& limits);
  void RecordFailure(const absl::Status& status);
  void SetHealthy(bool healthy);
  prometheus::Registry& registry() { return *registry_; }

 private:
  WorkerMetrics() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* forward_seconds_ = nullptr;
  prometheus::Histogram* collective_seconds_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Histogram* step_tokens_ = nullptr;
  prometheus::Histogram* rank_step_seconds_ = nullptr;
  prometheus::Histogram* rank_collective_seconds_ = nullptr;
  prometheus::Counter* steps_ = nullptr;
  prometheus::Family<prometheus::Counter>* failures_ = nullptr;
  prometheus::Gauge* kv_blocks_in_use_ = nullptr;
  prometheus::Gauge* kv_blocks_ = nullptr;
  prometheus::Family<prometheus::Gauge>* step_limit_ = nullptr;
  std::map<std::string, std::string> labels_;
  prometheus::Gauge* healthy_ = nullptr;
};

}  // namespace gemma
