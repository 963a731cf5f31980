// The CUDA backend as a module loaded on demand (libgemma_cuda.so), so that processes that never use a GPU do not
// load the CUDA libraries: a CPU-only machine or image has none, and cuBLASLt's large static TLS would otherwise
// shrink every thread's stack (civetweb's threads, serving /metrics, then fail to start).
#pragma once

#include <chrono>
#include <memory>

#include "absl/status/statusor.h"
#include "shard/collective/collective.h"
#include "shard/cuda/cuda_backend.h"

namespace gemma {

// Entry points of the module; built by the same compiler from the same headers as its users.
struct CudaModuleApi {
  int version;
  int (*device_count)();
  absl::StatusOr<std::unique_ptr<Backend>> (*create_backend)(std::shared_ptr<const ModelWeights> weights,
                                                             const KvCacheOptions& kv_options,
                                                             const CudaBackendOptions& options,
                                                             CudaCollective collective);
  absl::StatusOr<std::unique_ptr<DeviceCollective>> (*create_nccl)(HostCollective& bootstrap, int device,
                                                                   std::chrono::milliseconds timeout);
};
inline constexpr int kCudaModuleVersion = 3;  // 2: host and device collectives apart; 3: Backend::lora_capacity

// Loads the module once: $GEMMA_CUDA_MODULE, else libgemma_cuda.so beside the executable, else where the build
// put it. Unimplemented, saying where it looked, when there is none (a build without nvcc) or it does not load.
absl::StatusOr<const CudaModuleApi*> LoadCudaModule();

}  // namespace gemma
