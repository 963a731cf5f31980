#include "monitoring/metrics_server.h"

#include "absl/strings/str_cat.h"

namespace gemma {

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> ServeMetrics(const std::string& address,
                                                                  const std::shared_ptr<prometheus::Registry>& registry) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {  // prometheus-cpp reports a port it cannot bind by throwing
    exposer = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  return exposer;
}

}  // namespace gemma
