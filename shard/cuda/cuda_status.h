// CUDA and cuBLAS errors as Status, with the file and line of the call that failed.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace gemma::cuda {

inline absl::Status CudaError(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(file, ":", line, ": ", call, ": ", cudaGetErrorName(e), " (",
                                           cudaGetErrorString(e), ")");
  return e == cudaErrorMemoryAllocation ? absl::ResourceExhaustedError(message) : absl::InternalError(message);
}

inline absl::Status CublasError(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", call, ": cuBLAS status ", static_cast<int>(s),
                                          " (", cublasLtGetStatusString(s), ")"));
}

}  // namespace gemma::cuda

#define GEMMA_CUDA_RETURN_IF_ERROR(call)                                                      \
  do {                                                                                        \
    if (absl::Status _s = ::gemma::cuda::CudaError((call), #call, __FILE__, __LINE__); !_s.ok()) \
      return _s;                                                                              \
  } while (0)

#define GEMMA_CUBLAS_RETURN_IF_ERROR(call)                                                      \
  do {                                                                                          \
    if (absl::Status _s = ::gemma::cuda::CublasError((call), #call, __FILE__, __LINE__); !_s.ok()) \
      return _s;                                                                                \
  } while (0)
