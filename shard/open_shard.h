// Opens one rank's shard of a model: checkpoint -> tensor-parallel slice -> weights -> collective -> backend, on
// the CPU or a GPU. The worker, the gemma command and the benches all open shards through it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shard/runtime/backend.h"
#include "shard/checkpoint/checkpoint.h"
#include "shard/collective/collective.h"
#include "shard/runtime/kv_cache.h"
#include "shard/runtime/step_limits.h"
#include "shard/model/model_weights.h"
#include "shard/model/tensor_parallel.h"

namespace gemma {

struct ShardOptions {
  int rank = 0;
  int world = 1;
  std::string device = "cpu";      // cpu or cuda
  std::string precision = "bf16";  // with cuda: bf16 or f32
  std::string weights = "bf16";    // stored weight precision: bf16, int8, int4, fp8 (fp8 on a GPU: compute capability 8.9+)
  int int4_group_size = 0;         // with int4: input columns per scale and zero (32, 64, 128; 0 chooses)
  std::string activations = "f32";  // CPU weight products: f32, bf16 (weights bf16), int8 (weights int8, int4)
  int cuda_device = -1;            // -1: rank modulo the devices this process sees
  KvCacheOptions kv;
  StepLimits limits;  // the largest step; a GPU plans its memory for it
  // With cuda: LoRA adapters resident on the GPU at once, and the rank their slots hold (CudaBackendOptions).
  int gpu_lora_slots = 0;
  int gpu_lora_max_rank = 16;
  std::chrono::milliseconds timeout{30000};  // a dead or hung peer fails the group within it
  // Called once the weights are loaded and before the first collective call (NCCL bootstrap, a follower's first
  // step), which run under `timeout`: ranks that finish loading minutes apart meet here under a wait of their own.
  std::function<absl::Status()> after_load;
};

struct OpenedShard {
  TensorParallel tp;
  std::shared_ptr<const ModelWeights> weights;
  std::unique_ptr<Backend> backend;
};

// InvalidArgument for a bad device, precision or degree; Unimplemented for cuda in a build without it;
// FailedPrecondition when no GPU is visible. `collective` is the group's host collective (null for one rank):
// the CPU backend reduces over it, a GPU group bootstraps NCCL through it.
absl::StatusOr<OpenedShard> OpenShard(std::shared_ptr<const Checkpoint> checkpoint, const ShardOptions& options,
                                      std::shared_ptr<Collective> collective);

}  // namespace gemma
