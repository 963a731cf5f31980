// gemma-cuda-bench's decode runner: sequences with their own blocks decoding greedily, tokens drawn on the device,
// as the worker runs steps.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "shard/runtime/backend.h"

namespace gemma {

nlohmann::json StageMilliseconds(const StepTimings& t);
// n token ids: 2 (BOS), then a spread of ids from `seed`.
std::vector<int32_t> Tokens(int n, int vocab, uint32_t seed);
// Greedy draws for the first `rows` logits rows.
std::vector<RowSample> Greedy(int rows);
// Sequence s's block table: blocks_per_sequence blocks of its own, from first_block on.
std::vector<int32_t> SequenceTable(int first_block, int blocks_per_sequence, int s);

struct DecodeResult {
  double tokens_per_s = 0;
  double launched_step_ms = 0;       // one more step launched kernel by kernel (no graph)
  nlohmann::json launched_stages;    // its device ms per stage, where the backend clocks stages
};
// `batch` sequences decoding `steps` tokens each after a `context`-token prompt, their blocks from `first_block` on.
// The first two decode steps warm up (the second captures the decode graph) and are not timed. With `adapters`,
// sequence s runs with adapters[s % adapters.size()].
absl::StatusOr<DecodeResult> Decode(Backend& backend, int batch, int context, int steps, int first_block,
                                    int blocks_per_sequence, std::span<const LoraAdapter* const> adapters = {});

}  // namespace gemma
