// One block per row; threads stride over the row's columns.
#include <cuda_bf16.h>

#include "shard/cuda/intervention_kernels.h"

namespace gemma::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void ScaleRows(float* x, int64_t ld, int64_t first, int64_t width, float factor) {
  float* row = x + (first + blockIdx.x) * ld;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) row[i] *= factor;
}

__global__ void AddToRows(float* x, int64_t ld, int64_t first, int64_t width, const float* v) {
  float* row = x + (first + blockIdx.x) * ld;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) row[i] += v[i];
}

template <typename T>
__global__ void ZeroColumns(T* x, int64_t ld, int64_t first, int64_t col, int64_t width) {
  T* row = x + (first + blockIdx.x) * ld + col;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) row[i] = T(0.0f);
}

}  // namespace

cudaError_t LaunchScaleRows(float* x, int64_t ld, int64_t first, int rows, int64_t width, float factor,
                            cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  ScaleRows<<<rows, kThreads, 0, stream>>>(x, ld, first, width, factor);
  return cudaGetLastError();
}

cudaError_t LaunchAddToRows(float* x, int64_t ld, int64_t first, int rows, int64_t width, const float* v,
                            cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  AddToRows<<<rows, kThreads, 0, stream>>>(x, ld, first, width, v);
  return cudaGetLastError();
}

cudaError_t LaunchZeroColumns(void* x, Dtype type, int64_t ld, int64_t first, int rows, int64_t col, int64_t width,
                              cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (type == Dtype::kF32) {
    ZeroColumns<<<rows, kThreads, 0, stream>>>(static_cast<float*>(x), ld, first, col, width);
  } else {
    ZeroColumns<<<rows, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(x), ld, first, col, width);
  }
  return cudaGetLastError();
}

}  // namespace gemma::cuda
