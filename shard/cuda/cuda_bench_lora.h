// gemma-cuda-bench's LoRA part: decode with rows of several adapters against the base model, in the same run.
#pragma once

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "shard/runtime/backend.h"

namespace gemma {

// `batch` sequences decoding over `adapters` random adapters of rank `rank` on all seven projections (rows spread
// over them in turn; RandomLoraAdapter, as `gemma bench --adapters` makes them), against the same batch without
// adapters measured just before and after: tokens/s of each and the adapted run's share of the base's mean
// (the target is 0.8). Blocks as Decode takes them.
absl::StatusOr<nlohmann::json> LoraDecodeAgainstBase(Backend& backend, int batch, int adapters, int rank, int context,
                                                     int steps, int first_block, int blocks_per_sequence);

}  // namespace gemma
