#include "shard/cuda/gemm.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "shard/cuda/cuda_status.h"

namespace gemma::cuda {

absl::StatusOr<std::unique_ptr<Gemm>> Gemm::Create(const GemmOptions& options) {
  auto g = std::unique_ptr<Gemm>(new Gemm());
  g->options_ = options;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&g->handle_));
  auto ws = DeviceBuffer::Allocate(options.workspace_bytes, "the cuBLASLt workspace");
  if (!ws.ok()) return ws.status();
  g->workspace_ = std::move(*ws);
  if (options.mode == DecodeGemmMode::kBatchInvariant) {
    // DecodeMmaSplits splits K only while columns * splits < 8 * multiprocessors (it doubles from below 4x), so
    // split sums never exceed that many columns of kDecodeMmaMaxRows rows.
    const int64_t columns = 8 * static_cast<int64_t>(std::max(1, options.multiprocessors));
    const int64_t floats = columns * kDecodeMmaFeaturesPerBlock * kDecodeMmaMaxRows;
    auto partials = DeviceBuffer::Allocate(static_cast<size_t>(floats) * 4, "the decode GEMM's split sums");
    auto counters = DeviceBuffer::Allocate(static_cast<size_t>(columns) * 4, "the decode GEMM's counters");
    if (!partials.ok()) return partials.status();
    if (!counters.ok()) return counters.status();
    GEMMA_CUDA_RETURN_IF_ERROR(cudaMemset(counters->get(), 0, counters->bytes()));
    GEMMA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    g->decode_partials_ = std::move(*partials);
    g->decode_counters_ = std::move(*counters);
    g->decode_ws_ = {g->decode_partials_.as<float>(), floats, g->decode_counters_.as<unsigned>(),
                     static_cast<int>(columns)};
  }
  return g;
}

Gemm::~Gemm() {
  plans_.clear();
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

namespace {

// The largest power of two up to 256 that divides the address.
int Alignment(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

cudaDataType_t CudaType(Dtype t) { return t == Dtype::kBf16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

// cuBLASLt is column-major: row-major c[M, N] = a[M, K] op(w) is, column-major, c^T[N, M] = op'(w) a^T, with w seen
// as K x N (rows ldw apart: op' transposes it) or, with w_rows_are_k, as N x K (op' leaves it), and a^T as K x M.
absl::StatusOr<Gemm::Plan*> Gemm::PlanFor(const GemmArgs& g) {
  const Key key{{g.M, g.N, g.K, g.lda, g.ldw, g.ldc, g.stride_a, g.stride_w, g.stride_c, g.batch},
                {static_cast<int>(g.in), static_cast<int>(g.out), g.w_rows_are_k, Alignment(g.a), Alignment(g.w),
                 Alignment(g.c)}};
  if (auto it = plans_.find(key); it != plans_.end()) return &it->second;
  if (plans_.size() >= 4096) plans_.clear();  // many prompt lengths each make their own attention shapes
  Plan p;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transa = g.w_rows_are_k ? CUBLAS_OP_N : CUBLAS_OP_T, transb = CUBLAS_OP_N;
  GEMMA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
  GEMMA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  if (g.w_rows_are_k) {
    GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.a, CudaType(g.in), g.N, g.K, g.ldw));
  } else {
    GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.a, CudaType(g.in), g.K, g.N, g.ldw));
  }
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.b, CudaType(g.in), g.K, g.M, g.lda));
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p.c, CudaType(g.out), g.N, g.M, g.ldc));
  if (g.batch > 1) {
    const int32_t batch = g.batch;
    for (auto [layout, stride] : {std::pair{p.a, g.stride_w}, std::pair{p.b, g.stride_a}, std::pair{p.c, g.stride_c}}) {
      GEMMA_CUBLAS_RETURN_IF_ERROR(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
      GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
    }
  }
  cublasLtMatmulPreference_t pref;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = workspace_.bytes();
  const uint32_t align_a = Alignment(g.w), align_b = Alignment(g.a), align_c = Alignment(g.c);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c));
  cublasLtMatmulHeuristicResult_t results[16];
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, 16, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  GEMMA_CUBLAS_RETURN_IF_ERROR(s);
  int chosen = -1;
  // Decode-sized products keep a row's result independent of the rows beside it, where asked: no split-K.
  const bool batch_invariant = options_.mode != DecodeGemmMode::kFastest && g.M <= kSmallBatchMaxRows;
  for (int i = 0; i < found && chosen < 0; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    int splits = 1;
    size_t written = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&results[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits),
                                         &written);
    if (!batch_invariant || written == 0 || splits <= 1) chosen = i;
  }
  if (chosen < 0 && found > 0 && results[0].state == CUBLAS_STATUS_SUCCESS) {
    // Still correct, but a row's result may then depend on the rows beside it.
    std::fprintf(stderr, "gemma CUDA backend: cuBLASLt offers only split-K for [%lld x %lld] x [%lld x %lld]^T; "
                 "results of this shape may vary with the batch\n", static_cast<long long>(g.M),
                 static_cast<long long>(g.K), static_cast<long long>(g.N), static_cast<long long>(g.K));
    chosen = 0;
  }
  if (chosen < 0) {
    return absl::InternalError(absl::StrCat("cuBLASLt has no algorithm for [", g.M, " x ", g.K, "] x [", g.N, " x ",
                                            g.K, "]^T (", found, " candidates)"));
  }
  p.algo = results[chosen].algo;
  return &plans_.emplace(key, std::move(p)).first->second;
}

absl::Status Gemm::Run(const GemmArgs& g, cudaStream_t stream) {
  if (g.M == 0 || g.N == 0) return absl::OkStatus();
  const bool weight_product = g.batch == 1 && !g.w_rows_are_k && g.out == Dtype::kF32 && g.lda == g.K;
  bool small = false, mma = false;
  switch (options_.mode) {
    case DecodeGemmMode::kFastest:
      small = g.M == 1 && !(g.N < 8192 && g.K >= 8192);
      break;
    case DecodeGemmMode::kBatchInvariant:
      mma = g.M >= options_.decode_mma_min_rows && g.in == Dtype::kBf16;
      small = !mma && g.M <= kSmallBatchMaxRows;
      break;
    case DecodeGemmMode::kCublasLtOnly:
      break;
  }
  if (weight_product && small &&
      SmallBatchGemmFits(g.a, g.w, g.ldw, static_cast<int>(g.M), static_cast<int>(g.K), g.in)) {
    GEMMA_CUDA_RETURN_IF_ERROR(LaunchSmallBatchGemm(g.a, g.w, g.ldw, static_cast<float*>(g.c), g.ldc,
                                                    static_cast<int>(g.M), static_cast<int>(g.N),
                                                    static_cast<int>(g.K), g.in, stream));
    return absl::OkStatus();
  }
  if (weight_product && mma) {
    const int splits = DecodeMmaSplits(g.N, g.K, options_.multiprocessors);
    if (DecodeMmaFits(g.a, g.w, g.ldw, static_cast<int>(g.M), g.N, g.K, splits, decode_ws_)) {
      GEMMA_CUDA_RETURN_IF_ERROR(LaunchDecodeMmaGemm(g.a, g.w, g.ldw, static_cast<float*>(g.c), g.ldc,
                                                     static_cast<int>(g.M), static_cast<int>(g.N),
                                                     static_cast<int>(g.K), splits, decode_ws_, stream));
      return absl::OkStatus();
    }
  }
  auto plan = PlanFor(g);
  if (!plan.ok()) return plan.status();
  const float alpha = 1.0f, beta = 0.0f;
  GEMMA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handle_, (*plan)->op, &alpha, g.w, (*plan)->a, g.a, (*plan)->b, &beta,
                                              g.c, (*plan)->c, g.c, (*plan)->c, &(*plan)->algo, workspace_.get(),
                                              workspace_.bytes(), stream));
  return absl::OkStatus();
}

}  // namespace gemma::cuda
