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
  bool cuda_graphs = true;  // replay decode steps as CUDA graphs, one per batch size (with their all-reduces at TP > 1)
  // Decode weight products: the fastest kernels (a row's logits may then change in the last bits with the batch it
  // is in), or kernels that sum every row alike in every batch of up to 8 and of 9 to 64 rows (gemm.h).
  bool batch_invariant = false;
  bool cublaslt_only = false;  // every product through cuBLASLt: for comparisons
  // Decode attention over Gemma's bf16 cache keeps the cache rows in flight as asynchronous copies
  // (kernels::StreamedAttention); off: the register-staged kernel, for comparisons. The same results either way.
  bool streamed_attention = true;
  // Each kernel of a step may start while the one before it finishes (programmatic dependent launch, Hopper and
  // later; ignored before): the weight products begin streaming their weights during the previous kernel's tail.
  bool programmatic_launch = true;
  // Runs of kPromptAttentionMinTokens prompt tokens or more attend through cuBLASLt's tensor-core products
  // instead of the tiled kernel.
  bool prompt_attention_gemm = true;
  // last_timings() in device time per stage (events on the stream) rather than the host's launch time; steps
  // replayed from graphs are not split.
  bool stage_timing = false;
  // The largest step: every buffer a step uses is allocated for it at start, and a larger step is refused.
  StepLimits limits;
  // LoRA adapters resident on the device at once, each in a slot reserved at start for every projection of every
  // layer at rank lora_max_rank (1..64; adapters of a higher rank are refused when a step names them). 0: none
  // reserved (the default: slots cost memory used or not), and rows with an adapter are refused.
  int lora_slots = 0;
  int lora_max_rank = 16;
  // Quantized weights: products of more rows than the streaming kernel takes dequantize each matrix into a scratch
  // of at most this many bytes (at least one row), slice by slice.
  int64_t dequant_scratch_bytes = int64_t{512} << 20;
};

// Where a CUDA rank's device memory went at start (bytes).
struct CudaMemoryReport {
  int64_t total = 0;         // the device's
  int64_t weights = 0;       // this rank's weights on the device
  int64_t step_buffers = 0;  // every buffer of the largest step
  int64_t adapters = 0;      // LoRA slots, their table, the LoRA step scratch and the steering vector
  int64_t used_before_kv = 0;  // by everything (this process's runtime and libraries, other processes) before the cache
  int64_t kv = 0;
  int kv_blocks = 0;
  double fraction = 0;  // the plan's share of the device (0: a fixed cache size)
  StepLimits limits;    // resolved
};
// The report of a backend CreateCudaBackend made; NotFound for any other backend.
absl::StatusOr<CudaMemoryReport> CudaMemoryReportOf(const Backend& backend);
// Decode graphs a CUDA backend holds now (0 for any other backend): tests check that steps really replay.
int CudaGraphsCaptured(const Backend& backend);

// Whether this build has the CUDA backend, and how many devices this process sees (0 without CUDA).
bool CudaBackendBuilt();
int CudaDeviceCount();

// How a CUDA rank reaches the other ranks of its group for tensors: a device collective (NCCL on device
// `options.device`: the normal case), or a host collective, to which the backend copies each tensor through
// pinned host memory and back (ranks sharing one GPU, which NCCL refuses, as in tests); empty (or a null pointer)
// for a group of one.
using CudaCollective = std::variant<std::monostate, std::shared_ptr<DeviceCollective>, std::shared_ptr<HostCollective>>;

// `collective` must be rank weights->tp().rank of weights->tp().world (else InvalidArgument). At start the backend
// allocates every buffer of the largest step (options.limits), runs that step once, and then sizes the KV cache:
// from kv_options.memory_fraction of the device (memory_plan.h), else num_blocks or max_bytes. Out of device
// memory for any of it is ResourceExhausted saying what was needed, what is free and which settings change it.
// Unimplemented in a build without CUDA.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights> weights,
                                                           const KvCacheOptions& kv_options,
                                                           const CudaBackendOptions& options,
                                                           CudaCollective collective = {});

}  // namespace gemma
