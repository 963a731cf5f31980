// The kernels of per-row interventions on the GPU: each touches a block of consecutive rows (one sequence's tokens
// within an intervention's positions) of a row-major matrix and nothing else. Launchers return the launch error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "shard/cuda/kernels.h"

namespace gemma::cuda {

// x[first + r, :width] *= factor for r < rows (rows ld floats apart).
cudaError_t LaunchScaleRows(float* x, int64_t ld, int64_t first, int rows, int64_t width, float factor,
                            cudaStream_t stream);

// x[first + r, :width] += v[:width] for r < rows; v on the device.
cudaError_t LaunchAddToRows(float* x, int64_t ld, int64_t first, int rows, int64_t width, const float* v,
                            cudaStream_t stream);

// x[first + r, col : col + width] = 0 for r < rows, x of `type` (rows ld elements apart).
cudaError_t LaunchZeroColumns(void* x, Dtype type, int64_t ld, int64_t first, int rows, int64_t col, int64_t width,
                              cudaStream_t stream);

}  // namespace gemma::cuda
