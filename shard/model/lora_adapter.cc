#include "shard/model/lora_adapter.h"

namespace gemma {

const char* LoraTargetName(LoraTarget target) {
  static constexpr const char* kNames[kNumLoraTargets] = {
      "q_proj",    "k_proj",  "v_proj",   "o_proj",
      "gate_proj", "up_proj", "down_proj"};
  return kNames[static_cast<int>(target)];
}

int64_t LoraAdapter::bytes() const {
  int64_t total = 0;
  for (const auto& layer : layers) {
    for (const LoraPair& p : layer)
      total += static_cast<int64_t>((p.a.size() + p.b.size()) * sizeof(float));
  }
  return total;
}

}  // namespace gemma
