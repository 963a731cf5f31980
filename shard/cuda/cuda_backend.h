// The CUDA backend: the Gemma forward pass on one GPU per rank, behind the same Backend interface as the CPU one.
// Weights (this rank's slices) live in device memory; GEMMs run through cuBLASLt; RMSNorm, RoPE, GeGLU, residual
// adds and paged attention over the same block tables as the CPU backend are CUDA kernels (shard/cuda/kernels.cuh).
#pragma once

#include <memory>
#include <variant>

#include "absl/status/statusor.h"
#include "shard/runtime/backend.h"
#include "shard/collective/collective.h"
#include "shard/collective/device_collective.h"
#include "shard/runtime/kv_cache.h"
#include "shard/runtime/step_limits.h"
#include "shard/model/model_weights.h"

namespace gemma {

enum class CudaPrecision {
  kBf16,  // weights, GEMM inputs and KV cache in bf16 (f32 accumulation, f32 residual stream)
  kF32,   // everything in f32, no TF32: for exact comparisons with the CPU backend
};

struct CudaBackendOptions {
  int device = 0;
  CudaPrecision precision = CudaPrecision::kBf16;
  bool cuda_graphs = true;  // replay decode steps (one GPU) as CUDA graphs, one per batch size
  bool small_batch_gemm = true;  // decode GEMMs (<= 8 rows) through the weight-streaming kernel, not cuBLASLt
  // Runs of kPromptAttentionMinTokens prompt tokens or more attend through cuBLASLt's tensor-core products
  // instead of the tiled kernel.
  bool prompt_attention_gemm = true;
  // last_timings() in device time per stage (events on the stream) rather than the host's launch time; steps
  // replayed from graphs are not split.
  bool stage_timing = false;
  // The largest step: every buffer a step uses is allocated for it at start, and a larger step is refused.
  StepLimits limits;
};

// Whether this build has the CUDA backend, and how many devices this process sees (0 without CUDA).
bool CudaBackendBuilt();
int CudaDeviceCount();

// How a CUDA rank reaches the other ranks of its group for tensors: a device collective (NCCL on device
// `options.device`: the normal case), or a host collective, to which the backend copies each tensor through
// pinned host memory and back (ranks sharing one GPU, which NCCL refuses, as in tests); empty (or a null pointer)
// for a group of one.
using CudaCollective = std::variant<std::monostate, std::shared_ptr<DeviceCollective>, std::shared_ptr<HostCollective>>;

// `collective` must be rank weights->tp().rank of weights->tp().world (else InvalidArgument). Out of device memory for the weights or
// the KV cache (KvCacheOptions::max_bytes) is ResourceExhausted saying what was needed and what is free.
// Unimplemented in a build without CUDA.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights> weights,
                                                           const KvCacheOptions& kv_options,
                                                           const CudaBackendOptions& options,
                                                           CudaCollective collective = {});

}  // namespace gemma
