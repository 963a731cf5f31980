// The tensor-core decode GEMM on the device (label gpu): against cuBLASLt on random bf16 inputs, split and unsplit
// K, columns that do not fill a block; and each row's result the same bits whatever the batch it is in, 1 to 64.
#include "shard/cuda/decode_gemm.h"

#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "shard/cuda/cuda_test_support.h"
#include "shard/cuda/gemm.h"

namespace gemma::cuda {
namespace {

template <typename T>
T* ToDevice(const std::vector<T>& v) {
  T* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, v.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  cudaDeviceSynchronize();
  return d;
}

std::vector<float> ToHost(const float* d, size_t n) {
  std::vector<float> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

struct Shape {
  int N, K;
};

class DecodeGemmTest : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    if (!cuda_testing::HaveDevice()) GTEST_SKIP() << "no CUDA device present";
  }
};

TEST_P(DecodeGemmTest, MatchesCublasAndEveryRowIsTheSameInEveryBatch) {
  const auto [N, K] = GetParam();
  constexpr int M = kDecodeMmaMaxRows;
  std::mt19937 rng(N * 7 + K);
  const auto a = cuda_testing::RandomBf16(static_cast<size_t>(M) * K, rng);
  const auto w = cuda_testing::RandomBf16(static_cast<size_t>(N) * K, rng);
  uint16_t *da = ToDevice(a), *dw = ToDevice(w);
  float* dc = nullptr;
  ASSERT_EQ(cudaMalloc(&dc, static_cast<size_t>(M) * N * sizeof(float)), cudaSuccess);
  GemmOptions lt_only, mma_all;
  lt_only.mode = DecodeGemmMode::kCublasLtOnly;
  mma_all.mode = DecodeGemmMode::kBatchInvariant;
  mma_all.decode_mma_min_rows = 1;  // every row count through the tensor-core kernel
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  mma_all.multiprocessors = sms;
  auto lt = Gemm::Create(lt_only);
  auto mma = Gemm::Create(mma_all);
  ASSERT_TRUE(lt.ok() && mma.ok());
  ASSERT_TRUE((*lt)->Run(da, dw, K, dc, N, M, N, K, Dtype::kBf16, nullptr).ok());
  const auto want = ToHost(dc, static_cast<size_t>(M) * N);
  ASSERT_TRUE((*mma)->Run(da, dw, K, dc, N, M, N, K, Dtype::kBf16, nullptr).ok());
  const auto all_rows = ToHost(dc, static_cast<size_t>(M) * N);
  for (size_t i = 0; i < want.size(); ++i) {
    // Both sum in f32 in different orders: within rounding of the sum's scale (sqrt(K) for unit inputs).
    ASSERT_NEAR(all_rows[i], want[i], 2e-4f * std::sqrt(static_cast<float>(K)) + 1e-3f * std::abs(want[i]))
        << "element " << i;
  }
  // Poisoned before each run: every output must be written.
  for (int m : {1, 2, 7, 8, 9, 16, 17, 31, 33, 48, 63}) {
    ASSERT_EQ(cudaMemset(dc, 0xff, static_cast<size_t>(M) * N * sizeof(float)), cudaSuccess);
    ASSERT_TRUE((*mma)->Run(da, dw, K, dc, N, m, N, K, Dtype::kBf16, nullptr).ok());
    const auto got = ToHost(dc, static_cast<size_t>(m) * N);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], all_rows[i]) << "row " << i / N << " column " << i % N << " differs in a batch of " << m;
    }
  }
  cudaFree(da);
  cudaFree(dw);
  cudaFree(dc);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeGemmTest,
                         ::testing::Values(Shape{1000, 512},    // a partial block of columns, K unsplit
                                           Shape{1000, 4096},   // K split in 4
                                           Shape{3072, 24576},  // Gemma 7B's down projection, split in 8
                                           Shape{64, 2080}),    // K not a multiple of the unrolled chunk
                         [](const auto& info) {
                           return "N" + std::to_string(info.param.N) + "_K" + std::to_string(info.param.K);
                         });

// The batch-invariant dispatch: rows 1..8 on the one-warp-per-output kernel, 9..64 on the tensor cores, each
// invariant in its own range (the two round differently: that is where batch invariance ends).
TEST(DecodeGemmDispatchTest, EachKernelKeepsItsRowsInvariant) {
  if (!cuda_testing::HaveDevice()) GTEST_SKIP() << "no CUDA device present";
  constexpr int M = kDecodeMmaMaxRows, N = 640, K = 3072;
  std::mt19937 rng(11);
  const auto a = cuda_testing::RandomBf16(static_cast<size_t>(M) * K, rng);
  const auto w = cuda_testing::RandomBf16(static_cast<size_t>(N) * K, rng);
  uint16_t *da = ToDevice(a), *dw = ToDevice(w);
  float* dc = nullptr;
  ASSERT_EQ(cudaMalloc(&dc, static_cast<size_t>(M) * N * sizeof(float)), cudaSuccess);
  GemmOptions invariant;
  invariant.mode = DecodeGemmMode::kBatchInvariant;
  auto gemm = Gemm::Create(invariant);
  ASSERT_TRUE(gemm.ok());
  auto first_row = [&](int m) {
    EXPECT_TRUE((*gemm)->Run(da, dw, K, dc, N, m, N, K, Dtype::kBf16, nullptr).ok());
    return ToHost(dc, N);
  };
  const auto small = first_row(1), large = first_row(9);
  for (int m = 2; m <= 8; ++m) EXPECT_EQ(first_row(m), small) << m << " rows";
  for (int m = 10; m <= M; ++m) EXPECT_EQ(first_row(m), large) << m << " rows";
  cudaFree(da);
  cudaFree(dw);
  cudaFree(dc);
}

}  // namespace
}  // namespace gemma::cuda
