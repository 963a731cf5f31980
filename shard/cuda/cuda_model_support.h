// Which model features the CUDA backend computes; the rest it refuses before touching a device.
#pragma once

#include "absl/status/status.h"
#include "shard/model/model_config.h"

namespace gemma {

// OK for Gemma 1. FailedPrecondition naming each feature the CUDA kernels lack (Gemma 2's soft-caps, sandwich
// norms, query_pre_attn_scalar; sliding-window attention; Gemma 3's QK-norm, per-layer RoPE bases and scaling),
// so that a model is served right on the CPU or not at all, never computed wrong on a GPU. Thread-safe.
absl::Status CheckCudaModelSupport(const ModelConfig& config);

}  // namespace gemma
