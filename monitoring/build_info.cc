#include "monitoring/build_info.h"

#include "prometheus/gauge.h"

namespace gemma {

std::string BuildVersion() { return GEMMA_VERSION; }

void AddBuildInfo(prometheus::Registry& registry, int protocol) {
  prometheus::BuildGauge()
      .Name("gemma_build_info")
      .Help("1, labelled with this process's release and the router-worker protocol version it speaks.")
      .Register(registry)
      .Add({{"version", BuildVersion()}, {"protocol", std::to_string(protocol)}})
      .Set(1);
}

}  // namespace gemma
