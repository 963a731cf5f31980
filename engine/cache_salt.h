// The prefix cache's salt for a sequence whose model is changed: by a LoRA adapter, by interventions, or both.
#pragma once

#include <cstdint>
#include <span>

#include "engine/step_protocol.h"

namespace gemma {

// 0 for the base model without interventions (its KV is shared with every such sequence); otherwise a hash of the
// adapter id and every field of every intervention, so sequences share cached KV only when their changes are equal.
uint64_t ModelChangesCacheSalt(uint32_t adapter, std::span<const Intervention> interventions);

}  // namespace gemma
