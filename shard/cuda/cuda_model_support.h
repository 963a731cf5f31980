// Which models and slicings the CUDA backend computes; the rest it refuses before touching a device.
#pragma once

#include "absl/status/status.h"
#include "shard/model/model_config.h"
#include "shard/model/tensor_parallel.h"

namespace gemma {

// OK for every Gemma 1, 2 and 3 shape (sandwich norms, soft-caps, query_pre_attn_scalar, sliding windows, QK-norm,
// per-layer RoPE bases and linear scaling are all computed). FailedPrecondition or InvalidArgument for what the
// kernels do not handle (a head size over 256 or not a multiple of 4; query heads replicated across ranks), so that
// a model is served right on the CPU or not at all, never computed wrong on a GPU. Thread-safe.
absl::Status CheckCudaModelSupport(const ModelConfig& config, const TensorParallel& tp);

}  // namespace gemma
