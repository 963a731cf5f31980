// Random LoRA adapters for benchmarks: the cost of an adapter depends on its shapes, not its values.
#pragma once

#include <cstdint>
#include <memory>

#include "shard/model/lora_adapter.h"
#include "shard/model/model_config.h"

namespace gemma {

// An adapter of rank `r` on all seven projections of every layer of `c`, for one rank of a group of one, with
// normal(0, 0.02) weights drawn from `seed`, scaling 2 and id `seed`.
std::shared_ptr<const LoraAdapter> RandomLoraAdapter(const ModelConfig& c, int r, uint32_t seed);

}  // namespace gemma
