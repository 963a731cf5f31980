// gemma-worker --tp: one /metrics port for the whole pod. Kubernetes scrapes one declared port per pod, so the
// launcher serves it and answers each scrape with every local rank's metrics (each rank serves its own on an
// internal port), merged into one exposition.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

class CivetServer;

namespace gemma {

class PodMetricsHandler;

// Thread-safe: the HTTP server answers scrapes on its own threads.
class PodMetrics {
 public:
  // Serves /metrics on `address` ("0.0.0.0:9090"): rank first_rank+i's metrics read from 127.0.0.1:rank_ports[i],
  // `timeout` each, all at once. Unavailable (with the reason) when the port cannot be bound.
  static absl::StatusOr<std::unique_ptr<PodMetrics>> Serve(const std::string& address, int first_rank,
                                                           std::vector<int> rank_ports,
                                                           std::chrono::milliseconds timeout);
  ~PodMetrics();

  // One scrape's answer: gemma_worker_rank_up{rank} (1 if the rank answered) and every answering rank's metrics.
  std::string Scrape();

 private:
  PodMetrics() = default;
  std::vector<int> rank_ports_;
  std::chrono::milliseconds timeout_{1000};
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<prometheus::Gauge*> up_;
  std::unique_ptr<PodMetricsHandler> handler_;
  std::unique_ptr<CivetServer> server_;  // after the handler, so it goes first
};

}  // namespace gemma
