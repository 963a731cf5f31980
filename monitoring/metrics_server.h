// The /metrics endpoint every process serves: one place that starts prometheus-cpp's exposer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace gemma {

// Serves `registry` on `address` ("0.0.0.0:9090"); Unavailable (with the reason) when the port cannot be bound.
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> ServeMetrics(const std::string& address,
                                                                  const std::shared_ptr<prometheus::Registry>& registry);

}  // namespace gemma
