// gemma-cuda-bench's quantized-weights part: decode with the checkpoint quantized at load (int8, int4, fp8)
// against bf16, on the same GPU in the same run.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/cuda/cuda_backend.h"

namespace gemma {

struct QuantizedDecodeSetup {
  KvCacheOptions kv;
  CudaBackendOptions options;
  std::span<const int> batches;
  int context = 0, steps = 0, first_block = 0, blocks_per_sequence = 0;
  double bandwidth = 0;              // the copy bandwidth measured in the run, bytes/s
  double kv_bytes_per_position = 0;  // read per decoding sequence and position
};

// For each of `formats` (int8, int4, fp8): the weights quantized at load, one backend over them, and decode at
// each batch size: tokens/s, ms per step, and the step's floor (the quantized weights' bytes and the cache rows
// read once at the copy bandwidth) with the share of it reached. A format that fails records its error and the
// others go on.
nlohmann::json QuantizedDecode(std::shared_ptr<const Checkpoint> checkpoint, const QuantizedDecodeSetup& setup,
                               std::span<const std::string> formats);

}  // namespace gemma
