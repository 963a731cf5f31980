#include "shard/conformance/backend_under_test.h"

#include "shard/cpu/cpu_backend.h"
#include "shard/cuda/cuda_backend.h"

namespace gemma::testing {

std::string WhyNotHere(const BackendUnderTest& b) {
  if (!b.cuda) return "";
  if (!CudaBackendBuilt()) return "built without CUDA";
  if (CudaDeviceCount() == 0) return "no CUDA device present";
  return "";
}

absl::StatusOr<std::unique_ptr<Backend>> OpenBackendUnderTest(const BackendUnderTest& b,
                                                             std::shared_ptr<const ModelWeights> weights,
                                                             int kv_tokens,
                                                             std::shared_ptr<HostCollective> collective) {
  KvCacheOptions kv;
  kv.num_blocks = kv_tokens / kv.block_size;
  if (!b.cuda) {
    auto cpu = CpuBackend::Create(std::move(weights), kv, std::move(collective));
    if (!cpu.ok()) return cpu.status();
    return std::unique_ptr<Backend>(std::move(*cpu));
  }
  CudaBackendOptions o;
  o.precision = CudaPrecision::kF32;
  // Ranks of one process over a host collective must not both replay decode graphs (DESIGN.md).
  o.cuda_graphs = collective == nullptr;
  CudaCollective tensors;
  if (collective != nullptr) tensors = std::move(collective);
  return CreateCudaBackend(std::move(weights), kv, o, std::move(tensors));
}

}  // namespace gemma::testing
