// LoRA terms on the CPU: y += scaling * (x A^T) B^T for the tokens of each
// adapter, grouped by adapter, unmerged.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shard/model/lora_adapter.h"

namespace gemma {

// The tokens of one step that run with one adapter (SGMV's segments, on the
// CPU).
struct LoraGroup {
  const LoraAdapter* adapter = nullptr;
  std::vector<int64_t> tokens;  // indices into the step's [T, ...] activations
};

// Adds each group's term for projection `target` of `layer` to out ([T, ldo],
// the projection's columns starting at out), reading x ([T, ldx]). A and B are
// read once per group, not per token. Each output is computed in the same order
// whatever else is in the batch, so a row's result does not depend on its
// neighbours; tokens in no group are untouched. `scratch` is reused between
// calls. Thread-safe for distinct outputs; uses all threads.
void AddLoraTerms(std::span<const LoraGroup> groups, int layer,
                  LoraTarget target, const float* x, int64_t ldx, float* out,
                  int64_t ldo, std::vector<float>& scratch);

}  // namespace gemma
