// The module's one exported symbol.
#include "shard/cuda/cuda_module.h"
#include "shard/collective/nccl_collective.h"

extern "C" __attribute__((visibility("default"))) const gemma::CudaModuleApi* gemma_cuda_module_v1() {
  static const gemma::CudaModuleApi api = {gemma::kCudaModuleVersion, &gemma::CudaDeviceCount,
                                           &gemma::CreateCudaBackend, &gemma::CreateNcclCollective};
  return &api;
}
