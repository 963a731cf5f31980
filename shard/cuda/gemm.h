// Matrix products through cuBLASLt (row-major, bf16 or f32 inputs, f32 accumulation): activations times a weight
// matrix, and attention's batched products. Plans are cached per shape.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <map>
#include <memory>
#include <tuple>
#include <utility>

#include "absl/status/statusor.h"
#include "shard/cuda/decode_gemm.h"
#include "shard/cuda/device_buffer.h"
#include "shard/cuda/kernels.h"

namespace gemma::cuda {

// One product c = a * op(w), accumulated in f32: a is [M, K] (rows lda apart); w is [N, K] (a weight matrix, rows
// ldw apart) or, with w_rows_are_k, [K, N] (such as attention's V); c is [M, N] (rows ldc apart) of type `out`.
// A batch of products (batch > 1) steps each pointer by its own stride in elements; a stride of 0 shares the
// matrix across the batch.
struct GemmArgs {
  const void* a = nullptr;
  int64_t lda = 0;
  const void* w = nullptr;
  int64_t ldw = 0;
  bool w_rows_are_k = false;
  void* c = nullptr;
  int64_t ldc = 0;
  int64_t M = 0, N = 0, K = 0;
  Dtype in = Dtype::kBf16;   // a and w: bf16 (f32 accumulation) or f32 (full f32, no TF32)
  Dtype out = Dtype::kF32;
  int batch = 1;
  int64_t stride_a = 0, stride_w = 0, stride_c = 0;
};

// How decode-sized weight products (M <= kDecodeMmaMaxRows) choose their kernel.
enum class DecodeGemmMode {
  // The fastest measured (H100/H200, Gemma 7B shapes): one row through kernels::SmallBatchGemm, one warp per output
  // streaming the weights once, except narrow products with a long K (Gemma's down projection), which cuBLASLt
  // splits better; every larger product through cuBLASLt's first choice, split-K included. A row's result may then
  // change with the batch it is in.
  kFastest,
  // A row's result the same bits in every batch of 1..8 rows (SmallBatchGemm) and in every batch of 9..64 rows
  // (the tensor-core decode kernel, decode_gemm.h; bf16), at some cost in speed beyond one row.
  kBatchInvariant,
  // cuBLASLt alone (no split-K up to 8 rows), for comparisons.
  kCublasLtOnly,
};

struct GemmOptions {
  size_t workspace_bytes = size_t{32} << 20;  // cuBLASLt's
  DecodeGemmMode mode = DecodeGemmMode::kFastest;
  // kBatchInvariant: the row count from which the tensor-core kernel takes over from SmallBatchGemm (1: every row
  // count, for tests).
  int decode_mma_min_rows = kSmallBatchMaxRows + 1;
  int multiprocessors = 132;  // the device's, for the tensor-core kernel's split of K
};

// Not thread-safe: one stream's products at a time.
class Gemm {
 public:
  static absl::StatusOr<std::unique_ptr<Gemm>> Create(const GemmOptions& options = {});
  ~Gemm();

  // Decode-sized products take the kernel options().mode names; larger ones cuBLASLt's first choice.
  absl::Status Run(const GemmArgs& args, cudaStream_t stream);
  const GemmOptions& options() const { return options_; }

  // The common case: c[m, n] (f32, rows ldc apart) = sum_k a[m, k] * w[n, k], a's rows K apart.
  absl::Status Run(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int64_t M, int64_t N, int64_t K,
                   Dtype in, cudaStream_t stream) {
    GemmArgs g;
    g.a = a;
    g.lda = K;
    g.w = w;
    g.ldw = ldw;
    g.c = c;
    g.ldc = ldc;
    g.M = M;
    g.N = N;
    g.K = K;
    g.in = in;
    return Run(g, stream);
  }

 private:
  // Owns its descriptors, so that a plan abandoned half-made releases them too.
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    Plan() = default;
    Plan(Plan&& o) noexcept
        : op(std::exchange(o.op, nullptr)), a(std::exchange(o.a, nullptr)), b(std::exchange(o.b, nullptr)),
          c(std::exchange(o.c, nullptr)), algo(o.algo) {}
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
      if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
      if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
      if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
      if (op != nullptr) cublasLtMatmulDescDestroy(op);
    }
  };
  // Shape, leading dimensions, layout, types, batch and strides, and the pointers' alignments (cuBLASLt picks
  // algorithms for the alignment it is told of).
  using Key = std::tuple<std::array<int64_t, 10>, std::array<int, 6>>;
  Gemm() = default;
  absl::StatusOr<Plan*> PlanFor(const GemmArgs& g);

  cublasLtHandle_t handle_ = nullptr;
  GemmOptions options_;
  DeviceBuffer workspace_;
  DeviceBuffer decode_partials_, decode_counters_;
  DecodeMmaWorkspace decode_ws_;
  std::map<Key, Plan> plans_;
};

}  // namespace gemma::cuda
