// Matrix products through cuBLASLt: activations [M, K] times a weight matrix [N, K] (both row-major, bf16 or f32)
// into float [M, N], accumulating in f32. Plans are cached per shape.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>

#include "absl/status/statusor.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/kernels.h"

namespace gemma::cuda {

// Not thread-safe: one stream's products at a time.
class Gemm {
 public:
  // With `small_batch_kernel`, products of at most kSmallBatchMaxRows rows (decode) use kernels::SmallBatchGemm,
  // which streams the weights once with one warp per output; larger ones, and shapes it does not suit, cuBLASLt.
  static absl::StatusOr<std::unique_ptr<Gemm>> Create(size_t workspace_bytes = size_t{32} << 20,
                                                      bool small_batch_kernel = true);
  ~Gemm();

  // c[m, n] (leading dimension ldc) = sum_k a[m, k] * w[n, k] (w's rows ldw apart), for m < M, n < N, k < K.
  // a and w are `in` (bf16: f32 accumulation; f32: full f32, no TF32). The algorithm is chosen without split-K,
  // so a row's result does not depend on the other rows of the batch.
  absl::Status Run(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int64_t M, int64_t N, int64_t K,
                   Dtype in, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int>;
  Gemm() = default;
  absl::StatusOr<Plan*> PlanFor(int64_t M, int64_t N, int64_t K, int64_t ldw, int64_t ldc, Dtype in);

  cublasLtHandle_t handle_ = nullptr;
  bool small_batch_kernel_ = true;
  DeviceBuffer workspace_;
  std::map<Key, Plan> plans_;
};

}  // namespace gemma::cuda
