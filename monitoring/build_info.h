// gemma_build_info: one series per process naming its release and wire protocol, so a mixed rollout shows.
#pragma once

#include <string>

#include "prometheus/registry.h"

namespace gemma {

// This build's release (the CMake project version).
std::string BuildVersion();

// Registers gemma_build_info{version, protocol} = 1; `protocol` is the process's ProtocolVersion.
void AddBuildInfo(prometheus::Registry& registry, int protocol);

}  // namespace gemma
