#include "shard/cpu/lora.h"

#include "shard/cpu/ops.h"

namespace gemma {

void AddLoraTerms(std::span<const LoraGroup> groups, int layer,
                  LoraTarget target, const float* x, int64_t ldx, float* out,
                  int64_t ldo, std::vector<float>& scratch) {
  for (const LoraGroup& g : groups) {
    const LoraPair& p = g.adapter->at(layer, target);
    if (p.rank == 0) continue;
    const int64_t n = static_cast<int64_t>(g.tokens.size()), r = p.rank;
    scratch.resize(n * r);
    float* shrunk = scratch.data();  // [n, r]: scaling * x A^T
    const float scaling = g.adapter->scaling;
    // Shrink: one row of A against every token of the group.
#pragma omp parallel for schedule(static) if (r * n * p.in > 32768)
    for (int64_t j = 0; j < r; ++j) {
      const float* a = p.a.data() + j * p.in;
      for (int64_t i = 0; i < n; ++i)
        shrunk[i * r + j] = scaling * DotF32(x + g.tokens[i] * ldx, a, p.in);
    }
    // Expand: one row of B against every token.
#pragma omp parallel for schedule(static) if (r * n * p.out > 32768)
    for (int64_t o = 0; o < p.out; ++o) {
      const float* b = p.b.data() + o * r;
      for (int64_t i = 0; i < n; ++i)
        out[g.tokens[i] * ldo + o] += DotF32(shrunk + i * r, b, r);
    }
  }
}

}  // namespace gemma
