#include "shard/model/random_lora_adapter.h"

#include <random>

namespace gemma {

std::shared_ptr<const LoraAdapter> RandomLoraAdapter(const ModelConfig& c, int r, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto a = std::make_shared<LoraAdapter>();
  a->id = seed;
  a->rank = r;
  a->scaling = 2.0f;
  a->layers.resize(c.num_layers);
  const int64_t shapes[kNumLoraTargets][2] = {{c.q_dim(), c.hidden_size},         {c.kv_dim(), c.hidden_size},
                                              {c.kv_dim(), c.hidden_size},        {c.hidden_size, c.q_dim()},
                                              {c.intermediate_size, c.hidden_size}, {c.intermediate_size, c.hidden_size},
                                              {c.hidden_size, c.intermediate_size}};
  for (auto& layer : a->layers) {
    for (int t = 0; t < kNumLoraTargets; ++t) {
      LoraPair& p = layer[t];
      p.rank = r;
      p.out = shapes[t][0];
      p.in = shapes[t][1];
      p.a.resize(r * p.in);
      p.b.resize(p.out * r);
      for (float& v : p.a) v = normal(rng);
      for (float& v : p.b) v = normal(rng);
    }
  }
  return a;
}

}  // namespace gemma
