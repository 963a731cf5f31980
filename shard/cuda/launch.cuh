// Kernel launches that may overlap the kernel before them on the stream (programmatic dependent launch, Hopper and
// later): the next kernel's blocks are scheduled while the last wave of this one runs, wait in WaitForPrevious()
// until its memory is visible, and may read what does not depend on it (weights) before that. A decode step is some
// 300 short kernels, and the gaps between them otherwise cost as much as its attention.
//
// Contract: a kernel launched through Launch() calls WaitForPrevious() before it reads anything an earlier kernel
// wrote, and before it returns; it calls LetNextLaunch() once its own blocks are all scheduled (at its start).
#pragma once

#include <cuda_runtime.h>

#include "shard/cuda/programmatic_launch.h"

namespace gemma::cuda {

template <typename... Params, typename... Args>
cudaError_t Launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  if (!ProgrammaticLaunchEnabled()) {
    kernel<<<grid, block, 0, stream>>>(static_cast<Params>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

namespace kernels {

__device__ __forceinline__ void WaitForPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void LetNextLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Both, for kernels with nothing to read before the previous kernel is done.
__device__ __forceinline__ void AfterPrevious() {
  LetNextLaunch();
  WaitForPrevious();
}

}  // namespace kernels
}  // namespace gemma::cuda
