// Parts of gemma-cuda-bench beyond one backend's decode and prefill: the decode GEMM kernels on the model's own
// shapes, and tensor parallelism of two ranks sharing the GPU over a host collective.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "shard/checkpoint/checkpoint.h"
#include "shard/model/model_config.h"
#include "shard/runtime/kv_cache.h"

namespace gemma {

// Each decode-time weight product of `c` (qkv, o, gate_up, down, logits) at several row counts, through each
// kernel that can take it (the default dispatch, the tensor-core kernel for every row count, cuBLASLt alone), and
// the tensor-core kernel's K splits for the narrow products: device ms and the weights' bytes per second as a share
// of `bandwidth`. Weights rotate over copies larger than the L2 cache, so that every run reads device memory.
absl::StatusOr<nlohmann::json> DecodeGemmSweep(const ModelConfig& c, double bandwidth);

// Decode tokens/s of `batch` sequences at `context` on two ranks of `checkpoint` sharing device 0 over a shared-memory
// host collective, as threads of this process, steps launched kernel by kernel (no graphs: DESIGN.md, decode graphs
// at TP > 1).
absl::StatusOr<double> TensorParallelTwoDecode(std::shared_ptr<const Checkpoint> checkpoint, const KvCacheOptions& kv,
                                               int batch, int context, int steps);

}  // namespace gemma
