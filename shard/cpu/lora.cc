#include "shard/cpu/lora.h"

#include <algorithm>

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
    // Expand along the outputs, a block at a time (consecutive items of one block share its rows of B^T in cache):
    // each output is the same sequence of multiply-adds over j whatever the group's size.
    constexpr int64_t kBlock = 512;
    const float* bt = p.b.data();
    const int64_t blocks = (p.out + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (r * n * p.out > 32768)
    for (int64_t w = 0; w < blocks * n; ++w) {  // (block, token) pairs: the threads share tokens too
      const int64_t blk = w / n, i = w % n;
      const int64_t o0 = blk * kBlock, len = std::min(kBlock, p.out - o0);
      float acc[kBlock];
      std::fill_n(acc, len, 0.0f);
      for (int64_t j = 0; j < r; ++j) {
        const float s = shrunk[i * r + j];
        const float* row = bt + j * p.out + o0;
        for (int64_t o = 0; o < len; ++o) acc[o] += s * row[o];
      }
      float* y = out + g.tokens[i] * ldo + o0;
      for (int64_t o = 0; o < len; ++o) y[o] += acc[o];
    }
  }
}

}  // namespace gemma
