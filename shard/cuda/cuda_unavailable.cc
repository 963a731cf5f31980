// A build without the CUDA toolkit: the backend is named but cannot be made.
#include "shard/cuda/cuda_backend.h"

namespace gemma {

bool CudaBackendBuilt() { return false; }
int CudaDeviceCount() { return 0; }

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(std::shared_ptr<const ModelWeights>, const KvCacheOptions&,
                                                           const CudaBackendOptions&, CudaCollective) {
  return absl::UnimplementedError("this build has no CUDA backend (nvcc was not found when it was configured)");
}

int CudaGraphsCaptured(const Backend&) { return 0; }

}  // namespace gemma
