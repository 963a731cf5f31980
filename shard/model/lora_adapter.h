// A LoRA adapter's weights as one rank of a tensor-parallel group holds them
// (peft's layout, sliced like the base).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace gemma {

// The projections an adapter may target, in peft's names q_proj .. down_proj.
enum class LoraTarget : int { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumLoraTargets = 7;
const char* LoraTargetName(LoraTarget target);  // "q_proj", ...

// One adapted projection y += scaling * (x A^T) B^T. A and B are this rank's
// slices, sliced as the base matrix is: a column-parallel projection (q, k, v,
// gate, up) keeps all of A and its rows of B (columns of the stored B^T), a
// row-parallel one (o, down) its columns of A and all of B (so the ranks'
// partial sums add up, as the base's do).
struct LoraPair {
  int rank = 0;          // r; 0: this projection is not adapted in this layer
  std::vector<float> a;  // [r, in]
  std::vector<float> b;  // B^T: [r, out] (peft stores B as [out, r]); the products run along the outputs
  int64_t in = 0, out = 0;
};

// Immutable once loaded; thread-safe for concurrent reads.
struct LoraAdapter {
  uint32_t id = 0;   // the id rows name it by (never 0: that is the base model)
  std::string name;  // as registered
  std::string dir;   // where it was read from (followers of a tensor-parallel
                     // group read their slices there)
  int rank = 0;      // r of every adapted projection
  float scaling =
      1.0f;  // lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
  std::vector<std::string> target_modules;
  std::string fingerprint;  // sizes and modification times of its files, as read
  std::vector<std::array<LoraPair, kNumLoraTargets>> layers;  // [num_layers]
  const LoraPair& at(int layer, LoraTarget t) const {
    return layers[layer][static_cast<int>(t)];
  }
  int64_t bytes() const;  // of A and B on this rank
};

}  // namespace gemma
