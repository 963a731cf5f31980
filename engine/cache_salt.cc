#include "engine/cache_salt.h"

#include <cstring>

namespace gemma {

uint64_t ModelChangesCacheSalt(uint32_t adapter, std::span<const Intervention> interventions) {
  if (adapter == 0 && interventions.empty()) return 0;
  uint64_t h = 14695981039346656037ull;  // FNV-1a over every field
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  mix(&adapter, sizeof(adapter));
  for (const Intervention& iv : interventions) {
    const int32_t fields[] = {static_cast<int32_t>(iv.kind), iv.layer, iv.head, iv.begin_pos, iv.end_pos,
                              static_cast<int32_t>(iv.vector.size())};
    mix(fields, sizeof(fields));
    mix(&iv.factor, sizeof(iv.factor));
    mix(iv.vector.data(), iv.vector.size() * sizeof(float));
  }
  return h == 0 ? 1 : h;
}

}  // namespace gemma
