#include "shard/cuda/gemm.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_status.h"

namespace gemma::cuda {

absl::StatusOr<std::unique_ptr<Gemm>> Gemm::Create(size_t workspace_bytes, bool small_batch_kernel) {
  auto g = std::unique_ptr<Gemm>(new Gemm());
  g->small_batch_kernel_ = small_batch_kernel;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&g->handle_));
  auto ws = DeviceBuffer::Allocate(workspace_bytes, "the cuBLASLt workspace");
  if (!ws.ok()) return ws.status();
  g->workspace_ = std::move(*ws);
  return g;
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

// cuBLASLt is column-major: row-major c[M, N] = a[M, K] w[N, K]^T is, column-major, c^T[N, M] = w^T... taken as
// op_T(w as a K x N matrix) times (a as a K x M matrix).
absl::StatusOr<Gemm::Plan*> Gemm::PlanFor(int64_t M, int64_t N, int64_t K, int64_t ldw, int64_t ldc, Dtype in) {
  const Key key{M, N, K, ldw, ldc, static_cast<int>(in)};
  if (auto it = plans_.find(key); it != plans_.end()) return &it->second;
  Plan p;
  const cudaDataType_t type = in == Dtype::kBf16 ? CUDA_R_16BF : CUDA_R_32F;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  GEMMA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  GEMMA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.a, type, K, N, ldw));
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.b, type, K, M, K));
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, N, M, ldc));
  cublasLtMatmulPreference_t pref;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = workspace_.bytes();
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t results[16];
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, 16, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  GEMMA_CUBLAS_RETURN_IF_ERROR(s);
  int chosen = -1;
  for (int i = 0; i < found && chosen < 0; ++i) {
    int splits = 1;
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&results[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits),
                                         &written);
    if (results[i].state == CUBLAS_STATUS_SUCCESS && (written == 0 || splits <= 1)) chosen = i;
  }
  if (chosen < 0 && found > 0 && results[0].state == CUBLAS_STATUS_SUCCESS) {
    // Still correct, but a row's result may then depend on the rows beside it.
    std::fprintf(stderr, "gemma CUDA backend: cuBLASLt offers only split-K for [%lld x %lld] x [%lld x %lld]^T; "
                 "results of this shape may vary with the batch\n", static_cast<long long>(M), static_cast<long long>(K),
                 static_cast<long long>(N), static_cast<long long>(K));
    chosen = 0;
  }
  if (chosen < 0) {
    return absl::InternalError(absl::StrCat("cuBLASLt has no algorithm for [", M, " x ", K, "] x [", N, " x ", K,
                                            "]^T (", found, " candidates)"));
  }
  p.algo = results[chosen].algo;
  return &plans_.emplace(key, p).first->second;
}

absl::Status Gemm::Run(const void* a, const void* w, int64_t ldw, float* c, int64_t ldc, int64_t M, int64_t N,
                       int64_t K, Dtype in, cudaStream_t stream) {
  if (M == 0 || N == 0) return absl::OkStatus();
  if (small_batch_kernel_ && SmallBatchGemmFits(a, w, ldw, static_cast<int>(M), static_cast<int>(K), in)) {
    GEMMA_CUDA_RETURN_IF_ERROR(LaunchSmallBatchGemm(a, w, ldw, c, ldc, static_cast<int>(M), static_cast<int>(N),
                                                    static_cast<int>(K), in, stream));
    return absl::OkStatus();
  }
  auto plan = PlanFor(M, N, K, ldw, ldc, in);
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f, beta = 0.0f;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handle_, (*plan)->op, &alpha, w, (*plan)->a, a, (*plan)->b, &beta, c,
                                              (*plan)->c, c, (*plan)->c, &(*plan)->algo, workspace_.get(),
                                              workspace_.bytes(), stream));
  return absl::OkStatus();
}

}  // namespace gemma::cuda
