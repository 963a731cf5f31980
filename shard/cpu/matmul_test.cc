#include "shard/cpu/matmul.h"
#include "shard/cpu/cpu_backend.h"
#include "shard/cpu/fma_throughput.h"
#include "shard/cpu/matmul_bf16.h"
#include "shard/cpu/matmul_int8.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "shard/model/dtype.h"
#include "shard/model/quantize.h"

namespace gemma {
namespace {

struct Case {
  int64_t rows, K, stride;
};

TEST(MatMulTest, MatchesDoubleReferenceAndIsBatchInvariant) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  // K values cover the SIMD tail (K not a multiple of the vector width) and strided column slices.
  for (const Case& c : {Case{37, 128, 128}, Case{5, 100, 100}, Case{64, 192, 256}, Case{9, 7, 9}}) {
    std::vector<uint16_t> w(c.rows * c.stride);
    for (auto& v : w) v = F32ToBf16(normal(rng));
    const MatrixView a{w.data(), c.rows / 2, c.K, c.stride};
    const MatrixView b{w.data() + (c.rows / 2) * c.stride, c.rows - c.rows / 2, c.K, c.stride};
    const MatrixView views[] = {a, b};
    const int64_t M = 19;
    std::vector<float> x(M * c.K);
    for (auto& v : x) v = normal(rng);
    std::vector<float> all(M * c.rows);
    MatMul(x.data(), M, c.K, c.K, views, all.data(), c.rows);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < c.rows; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < c.K; ++k) ref += double(Bf16ToF32(w[n * c.stride + k])) * x[m * c.K + k];
        ASSERT_NEAR(all[m * c.rows + n], ref, 1e-4 * std::sqrt(double(c.K))) << m << "," << n;
      }
    }
    // Any sub-batch gives bit-identical rows.
    for (int64_t m0 : {0, 3, 10}) {
      for (int64_t len : {1, 2, 5, 9}) {
        if (m0 + len > M) continue;
        std::vector<float> part(len * c.rows);
        MatMul(x.data() + m0 * c.K, len, c.K, c.K, views, part.data(), c.rows);
        for (int64_t i = 0; i < len * c.rows; ++i) ASSERT_EQ(part[i], all[m0 * c.rows + i]) << "m0=" << m0 << " len=" << len;
      }
    }
  }
}

// int8, int4 and fp8 weights (fp8's small weights are E4M3 subnormals; also as row and column slices, two views in one call, and K with a SIMD tail for int8):
// the f32 kernel's results over the dequantized matrix to float32 rounding, bit for bit alike for any batch, and
// near a double-precision reference.
TEST(MatMulTest, QuantizedWeightsGiveTheDequantizedF32ResultsForAnyBatch) {
  // Every instruction set this machine has and the build compiled for (AVX-512, AVX2, SSE4...), not only the best.
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
  hwy::SetSupportedTargetsForTest(target);
  SCOPED_TRACE(hwy::TargetName(target));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  struct QCase {
    WeightFormat format;
    int64_t rows, K, group;
  };
  for (const QCase& c : {QCase{WeightFormat::kInt8, 23, 128, 0}, QCase{WeightFormat::kInt8, 9, 100, 0},
                         QCase{WeightFormat::kInt4, 17, 256, 64}, QCase{WeightFormat::kInt4, 8, 96, 32},
                         QCase{WeightFormat::kFp8, 23, 128, 0}, QCase{WeightFormat::kFp8, 9, 100, 0}}) {
    std::vector<uint16_t> w(c.rows * c.K);
    // fp8's weights span 2^-20..2^2, so that E4M3 subnormals (below 2^-15 of a row's largest) occur.
    std::uniform_real_distribution<float> octaves(-20.0f, 2.0f);
    for (auto& v : w) v = F32ToBf16(c.format == WeightFormat::kFp8 ? std::copysign(std::exp2(octaves(rng)), normal(rng)) : normal(rng));
    const MatrixView src{w.data(), c.rows, c.K, c.K};
    const QuantizedMatrix quantized = Quantize(src, c.format, c.group);
    const MatrixView& q = quantized.view;
    std::vector<float> deq(c.rows * c.K);
    const MatrixView f = DequantizeInto(q, deq.data());
    const MatrixView qviews[] = {RowSlice(q, 0, c.rows / 3), RowSlice(q, c.rows / 3, c.rows - c.rows / 3)};
    const MatrixView fviews[] = {f};
    const int64_t M = 11;
    std::vector<float> x(M * c.K);
    for (auto& v : x) v = normal(rng);
    std::vector<float> got(M * c.rows), want(M * c.rows);
    MatMul(x.data(), M, c.K, c.K, qviews, got.data(), c.rows);
    MatMul(x.data(), M, c.K, c.K, fviews, want.data(), c.rows);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 2e-6 * std::sqrt(double(c.K)) * (1 + std::abs(want[i])))
          << WeightFormatName(c.format) << " K=" << c.K << " token " << i / c.rows << " row " << i % c.rows;
    }
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < c.rows; ++n) {
        double ref = 0;
        for (int64_t k = 0; k < c.K; ++k) ref += double(ElementAt(q, n, k)) * x[m * c.K + k];
        ASSERT_NEAR(got[m * c.rows + n], ref, 1e-4 * std::sqrt(double(c.K)));
      }
    }
    for (int64_t m0 : {0, 4}) {
      for (int64_t len : {1, 3, 6}) {
        std::vector<float> part(len * c.rows);
        MatMul(x.data() + m0 * c.K, len, c.K, c.K, qviews, part.data(), c.rows);
        for (int64_t i = 0; i < len * c.rows; ++i) ASSERT_EQ(part[i], got[m0 * c.rows + i]) << m0 << "+" << len;
      }
    }
    // A column slice (group-aligned for int4) reads only its columns.
    const int64_t begin = c.format == WeightFormat::kInt4 ? c.group : 12, count = c.K - begin - (c.K - begin) % 32;
    auto slice = ColSlice(q, begin, count, "w");
    ASSERT_TRUE(slice.ok()) << slice.status();
    const MatrixView sviews[] = {*slice};
    std::vector<float> sliced(c.rows);
    MatMul(x.data(), 1, count, c.K, sviews, sliced.data(), c.rows);
    for (int64_t n = 0; n < c.rows; ++n) {
      double ref = 0;
      for (int64_t k = 0; k < count; ++k) ref += double(ElementAt(q, n, begin + k)) * x[k];
      ASSERT_NEAR(sliced[n], ref, 1e-4 * std::sqrt(double(count)));
    }
  }
  }
  hwy::SetSupportedTargetsForTest(0);
}

// Rows longer than a column chunk (a down projection's): the chunks' sums, added in order, equal for a lone token
// or a decode batch (each row tile takes its chunks in turn) and for more than 8 (each chunk meets every row
// first), whether token tiles stream the weights or read them widened once a stretch at a time (as measured, never
// and always), in every format and on every instruction set; near a double-precision reference; the last chunk
// two stretches, the second partial, then the tail after the last whole block. Two threads, so that each holds
// whole 4-row tiles of both views.
TEST(MatMulTest, LongRowsGiveTheSameSumsForAnyBatch) {
  struct Case {
    WeightFormat format;
    int group_size;  // int4 only
    bool col_slice;  // a view of columns [kOffset, kOffset + K) of a wider matrix, as row-parallel slicing makes
  };
  std::vector<Case> cases;
  for (const bool sliced : {false, true}) {
    for (const WeightFormat f : {WeightFormat::kBF16, WeightFormat::kF32, WeightFormat::kInt8, WeightFormat::kFp8}) {
      cases.push_back({f, 0, sliced});
    }
    for (const int g : {32, 64, 128}) cases.push_back({WeightFormat::kInt4, g, sliced});
  }
  constexpr int64_t kOffset = 128;
  // What this test changes is put back however it ends (an ASSERT returns early).
  struct Restore {
    int threads = omp_get_max_threads();
    ~Restore() {
      SetMatMulWideningForTest(MatMulWidening::kAsMeasured);
      hwy::SetSupportedTargetsForTest(0);
      omp_set_num_threads(threads);
    }
  } restore;
  omp_set_num_threads(2);
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    std::mt19937 rng(19);
    std::normal_distribution<float> normal;
    for (const Case& c : cases) {
      const std::string name = std::string(WeightFormatName(c.format)) + " group " + std::to_string(c.group_size) +
                               (c.col_slice ? " column slice" : "");
      SCOPED_TRACE(name);
      // Two whole chunks of columns, then 512 + 192 (int4: 512 + 128, whole groups) and a tail of 3.
      const int64_t rows = 9, K = c.format == WeightFormat::kInt4 ? 4736 : 4803, M = 15;
      const int64_t width = c.col_slice ? K + 2 * kOffset : K;
      std::vector<uint16_t> w(rows * width);
      for (auto& v : w) v = F32ToBf16(normal(rng));
      const MatrixView src{w.data(), rows, width, width};
      std::vector<float> w32(rows * width);
      for (int64_t i = 0; i < rows * width; ++i) w32[i] = Bf16ToF32(w[i]);
      const bool quantized = c.format != WeightFormat::kBF16 && c.format != WeightFormat::kF32;
      MatrixView whole = src;
      QuantizedMatrix q_memory;
      if (c.format == WeightFormat::kF32) {
        whole.format = WeightFormat::kF32;
        whole.data = nullptr;
        whole.f32 = w32.data();
      } else if (quantized) {
        q_memory = Quantize(src, c.format, c.group_size);
        whole = q_memory.view;
      }
      MatrixView q = whole;
      if (c.col_slice) {
        auto sliced = ColSlice(whole, kOffset, K, "test");
        ASSERT_TRUE(sliced.ok()) << sliced.status();
        q = *sliced;
      }
      const MatrixView views[] = {RowSlice(q, 0, 5), RowSlice(q, 5, rows - 5)};
      std::vector<float> x(M * K);
      for (auto& v : x) v = normal(rng);
      std::vector<float> all(M * rows);
      MatMul(x.data(), M, K, K, views, all.data(), rows);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < rows; ++n) {
          double ref = 0;
          for (int64_t k = 0; k < K; ++k) ref += double(ElementAt(q, n, k)) * x[m * K + k];
          ASSERT_NEAR(all[m * rows + n], ref, 1e-4 * std::sqrt(double(K))) << m << "," << n;
        }
      }
      for (const MatMulWidening widening :
           {MatMulWidening::kAsMeasured, MatMulWidening::kNever, MatMulWidening::kAlways}) {
        SetMatMulWideningForTest(widening);
        SCOPED_TRACE(widening == MatMulWidening::kAsMeasured ? "widened as measured"
                     : widening == MatMulWidening::kNever    ? "never widened"
                                                             : "always widened");
        for (const auto [m0, len] : {std::pair<int64_t, int64_t>{0, M}, {0, 1}, {0, 4}, {0, 5}, {0, 9}, {6, 1},
                                     {6, 4}, {6, 5}, {6, 9}}) {
          std::vector<float> part(len * rows);
          MatMul(x.data() + m0 * K, len, K, K, views, part.data(), rows);
          for (int64_t i = 0; i < len * rows; ++i) ASSERT_EQ(part[i], all[m0 * rows + i]) << m0 << "+" << len;
        }
      }
      SetMatMulWideningForTest(MatMulWidening::kAsMeasured);
    }
  }
}

// One call over views that pack x differently (bf16 and int4 even/odd, int8 and fp8 plain) gives each view's own
// result.
TEST(MatMulTest, MixedFormatsInOneCallGiveEachViewsResult) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  const int64_t K = 128, rows = 6, M = 5;
  std::vector<uint16_t> w(rows * K);
  for (auto& v : w) v = F32ToBf16(normal(rng));
  const MatrixView bf16{w.data(), rows, K, K};
  const QuantizedMatrix q8 = Quantize(bf16, WeightFormat::kInt8, 0), q4 = Quantize(bf16, WeightFormat::kInt4, 32),
                        qf8 = Quantize(bf16, WeightFormat::kFp8, 0);
  const MatrixView &i8 = q8.view, &i4 = q4.view, &f8 = qf8.view;
  std::vector<float> x(M * K);
  for (auto& v : x) v = normal(rng);
  const MatrixView mixed[] = {bf16, i8, i4, f8};
  constexpr int kViews = 4;
  std::vector<float> all(M * kViews * rows);
  MatMul(x.data(), M, K, K, mixed, all.data(), kViews * rows);
  for (int v = 0; v < kViews; ++v) {
    std::vector<float> alone(M * rows);
    MatMul(x.data(), M, K, K, std::span<const MatrixView>(&mixed[v], 1), alone.data(), rows);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < rows; ++n) ASSERT_EQ(all[m * kViews * rows + v * rows + n], alone[m * rows + n]) << v;
    }
  }
}

// bf16 activations over bf16 and fp8 weights: sums of bf16(x) * w near a double-precision reference, bit for bit
// alike for any batch, over row counts that leave a partial tile and K with a partial step (32 columns for bf16,
// 64 for fp8), through a column slice, as tensor parallelism cuts a row-parallel matrix. Without AVX512-BF16
// (or with another weight format) the kernel declines, and the caller runs MatMul.
TEST(MatMulTest, Bf16ActivationsSumBf16RoundedInputsForAnyBatch) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal;
  for (const WeightFormat format : {WeightFormat::kBF16, WeightFormat::kFp8}) {
    // K = 8192 with 11 tokens passes the size at which x is converted on all threads; 8192 and 4100 are summed
    // in column chunks, 4100's last one with a partial step.
    // 20 and 40 are a tail step alone. Each view is a column slice from column 40 on (not a whole step).
    for (const int64_t K : {256, 100, 8192, 4100, 20, 40}) {
      const int64_t rows = 23, M = 11, skip = 40;
      std::vector<uint16_t> w(rows * (K + skip));
      for (auto& v : w) v = F32ToBf16(normal(rng));
      const MatrixView bf16{w.data(), rows, K + skip, K + skip};
      QuantizedMatrix fp8;
      if (format == WeightFormat::kFp8) fp8 = Quantize(bf16, format, 0);
      const MatrixView full = format == WeightFormat::kFp8 ? fp8.view : bf16;
      auto slice = ColSlice(full, skip, K, "w");
      ASSERT_TRUE(slice.ok()) << slice.status();
      const MatrixView whole = *slice;
      const MatrixView views[] = {RowSlice(whole, 0, 9), RowSlice(whole, 9, rows - 9)};
      std::vector<float> x(M * K);
      for (auto& v : x) v = normal(rng);
      std::vector<float> got(M * rows);
      const bool ran = MatMulBf16Activations(x.data(), M, K, K, views, got.data(), rows);
      ASSERT_EQ(ran, HasBf16DotProducts());
      if (!ran) {
        std::printf("this CPU has no AVX512-BF16 with VBMI: only the kernel's refusal is checked here\n");
        continue;
      }
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < rows; ++n) {
          double ref = 0;
          for (int64_t k = 0; k < K; ++k) ref += double(Bf16ToF32(F32ToBf16(x[m * K + k]))) * ElementAt(whole, n, k);
          ASSERT_NEAR(got[m * rows + n], ref, 1e-5 * std::sqrt(double(K)) * (1 + std::abs(ref)))
              << WeightFormatName(format) << " " << m << "," << n;
        }
      }
      for (int64_t m0 : {0, 3}) {
        for (int64_t len : {1, 2, 5, 8}) {
          std::vector<float> part(len * rows);
          ASSERT_TRUE(MatMulBf16Activations(x.data() + m0 * K, len, K, K, views, part.data(), rows));
          for (int64_t i = 0; i < len * rows; ++i) ASSERT_EQ(part[i], got[m0 * rows + i]) << m0 << "+" << len;
        }
      }
    }
  }
  // An int8 view is not the kernel's: it declines.
  std::vector<uint16_t> w(4 * 64, F32ToBf16(1.0f));
  const QuantizedMatrix quantized = Quantize(MatrixView{w.data(), 4, 64, 64}, WeightFormat::kInt8, 0);
  const MatrixView& q = quantized.view;
  std::vector<float> x(64, 1.0f), out(4);
  EXPECT_FALSE(MatMulBf16Activations(x.data(), 1, 64, 64, std::span<const MatrixView>(&q, 1), out.data(), 4));
}

// The dot products' measured rate decides whether --activations bf16 runs them: a ratio where they exist (AMD's
// 2x and Intel's 0.5x both far from the threshold), none where they do not; and what the shard runs follows it,
// saying why when it falls back.
TEST(MatMulTest, Bf16DotProductsAreUsedOnlyWhereMeasuredFaster) {
  const double speedup = Bf16DotProductSpeedup();
  std::string why;
  const MatMulActivations runs = ActivationsThatRun(MatMulActivations::kBf16, &why);
  if (!HasBf16DotProducts()) {
    EXPECT_EQ(speedup, 0.0);
    EXPECT_FALSE(Bf16DotProductsPayOff());
    EXPECT_EQ(runs, MatMulActivations::kF32);
    EXPECT_NE(why.find("no AVX512-BF16"), std::string::npos) << why;
    return;
  }
  std::printf("vdpbf16ps multiply-adds at %.2fx the f32 FMA rate on this CPU\n", speedup);
  EXPECT_GT(speedup, 0.2);
  EXPECT_LT(speedup, 5.0);
  // The measure's f32 chains run near the FMA rate the bench's own measure finds on one thread: a build that left
  // its accumulators in memory slowed them about 3.3x and flipped the decision (it once read 1.6x here). Timed
  // against other tests on shared cores, so the bound is loose and the pair is taken up to three times.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  double best = 0, one_thread = 0;
  for (int attempt = 0; attempt < 3 && best < 0.4; ++attempt) {
    one_thread = MeasureFmaThroughput(3);
    best = std::max(best, MeasureBf16DotProductRates().fma / one_thread);
  }
  omp_set_num_threads(threads);
  EXPECT_GE(best, 0.4) << "the f32 chains ran at " << best << "x the one-thread FMA rate (" << one_thread << ")";
  EXPECT_EQ(Bf16DotProductsPayOff(), speedup >= kBf16DotProductsWorthIt);
  if (Bf16DotProductsPayOff()) {
    EXPECT_EQ(runs, MatMulActivations::kBf16);
    EXPECT_TRUE(why.empty()) << why;
  } else {
    EXPECT_EQ(runs, MatMulActivations::kF32);
    EXPECT_NE(why.find("the f32 kernel runs"), std::string::npos) << why;
  }
  // f32 always runs as asked; int8 wherever VNNI is.
  EXPECT_EQ(ActivationsThatRun(MatMulActivations::kF32, nullptr), MatMulActivations::kF32);
  EXPECT_EQ(ActivationsThatRun(MatMulActivations::kInt8, nullptr),
            HasInt8DotProducts() ? MatMulActivations::kInt8 : MatMulActivations::kF32);
}

// Every finite E4M3 code, widened in registers, is its exact value: a one-hot x picks each code out of a row
// holding all of them (the NaN codes, 0x7f and 0xff, are 0 there and make the sums of rows of their own NaN); and
// a call over bf16 and fp8 views together gives each view's own result.
TEST(MatMulTest, Bf16ActivationsWidenEveryFp8CodeExactly) {
  if (!HasBf16DotProducts()) GTEST_SKIP() << "this CPU has no AVX512-BF16 and VBMI: the kernel declines (tested above)";
  const int64_t K = 256;
  std::vector<uint8_t> codes(3 * K, 0);
  for (int64_t k = 0; k < K; ++k) codes[k] = (k & 0x7f) == 0x7f ? 0 : static_cast<uint8_t>(k);
  codes[K + 5] = 0x7f;
  codes[2 * K + 200] = 0xff;
  const float scales[] = {1.0f, 1.0f, 1.0f};
  MatrixView fp8;
  fp8.rows = 3;
  fp8.cols = K;
  fp8.stride = K;
  fp8.format = WeightFormat::kFp8;
  fp8.codes = codes.data();
  fp8.scales = scales;
  std::vector<float> x(K * K, 0.0f);
  for (int64_t k = 0; k < K; ++k) x[k * K + k] = 1.0f;
  std::vector<float> out(K * 3);
  ASSERT_TRUE(MatMulBf16Activations(x.data(), K, K, K, std::span<const MatrixView>(&fp8, 1), out.data(), 3));
  for (int64_t k = 0; k < K; ++k) {
    if ((k & 0x7f) != 0x7f) EXPECT_EQ(out[k * 3], Fp8E4M3ToF32(static_cast<uint8_t>(k))) << "code " << k;
    EXPECT_TRUE(std::isnan(out[k * 3 + 1]) && std::isnan(out[k * 3 + 2])) << k;
  }

  std::vector<uint16_t> w(3 * K);
  for (int64_t i = 0; i < 3 * K; ++i) w[i] = F32ToBf16(static_cast<float>(i % 7) - 3.0f);
  const MatrixView bf16{w.data(), 3, K, K};
  std::vector<uint8_t> finite(K);
  for (int64_t k = 0; k < K; ++k) finite[k] = static_cast<uint8_t>(k & 0x7e);  // no NaN code (0x7f, 0xff)
  fp8.codes = finite.data();
  fp8.rows = 1;
  const MatrixView mixed[] = {bf16, fp8};
  std::vector<float> x2(2 * K);
  for (int64_t i = 0; i < 2 * K; ++i) x2[i] = std::sin(static_cast<float>(i));
  std::vector<float> all(2 * 4), alone_bf16(2 * 3), alone_fp8(2);
  ASSERT_TRUE(MatMulBf16Activations(x2.data(), 2, K, K, mixed, all.data(), 4));
  ASSERT_TRUE(MatMulBf16Activations(x2.data(), 2, K, K, std::span<const MatrixView>(&bf16, 1), alone_bf16.data(), 3));
  ASSERT_TRUE(MatMulBf16Activations(x2.data(), 2, K, K, std::span<const MatrixView>(&fp8, 1), alone_fp8.data(), 1));
  for (int64_t m = 0; m < 2; ++m) {
    for (int64_t n = 0; n < 3; ++n) EXPECT_EQ(all[m * 4 + n], alone_bf16[m * 3 + n]);
    EXPECT_EQ(all[m * 4 + 3], alone_fp8[m]);
  }
}

// A row of x quantized as the int8 kernels promise, computed here on its own: codes round(x * 127 / max |x|) (to
// nearest even), all 0 for a zero row; returns max |x|.
float QuantizeRowForReference(const float* x, int64_t K, std::vector<int>* q) {
  float amax = 0;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::abs(x[k]));
  q->assign(K, 0);
  for (int64_t k = 0; k < K && amax > 0; ++k) (*q)[k] = static_cast<int>(std::nearbyint(x[k] * (127.0f / amax)));
  return amax;
}

// MatMulInt8Activations over rows [m0, m0 + len) of x alone gives what it gave for them in the whole call (`got`).
void ExpectTheSameRowsInSmallerCalls(const std::vector<float>& x, int64_t K, std::span<const MatrixView> views,
                                     int64_t rows, const std::vector<float>& got) {
  const int64_t M = static_cast<int64_t>(got.size()) / rows;
  for (int64_t m0 : {0, 3}) {
    for (int64_t len : {1, 2, 5, 8}) {
      if (m0 + len > M) continue;
      std::vector<float> part(len * rows);
      ASSERT_TRUE(MatMulInt8Activations(x.data() + m0 * K, len, K, K, views, part.data(), rows));
      for (int64_t i = 0; i < len * rows; ++i) ASSERT_EQ(part[i], got[m0 * rows + i]) << m0 << "+" << len;
    }
  }
}

// int8 activations over int8 weights: each token quantized as the test does it independently (max |x| / 127,
// round to nearest even), the integer sums exact, so the outputs equal xs * ws * sum(q * code) to float rounding;
// bit for bit alike for any batch; over row counts that leave a partial tile, K with a partial 64-byte step, and a
// strided column slice (a tensor-parallel rank's view). Without VNNI, or with a view not int8, the kernel declines.
TEST(MatMulTest, Int8ActivationsSumQuantizedInputsForAnyBatch) {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal;
  for (const int64_t K : {256, 100, 8192}) {
    const int64_t rows = 23, M = 11, stride = K + 64;
    std::vector<uint16_t> w(rows * stride);
    for (auto& v : w) v = F32ToBf16(normal(rng));
    const QuantizedMatrix quantized = Quantize(MatrixView{w.data(), rows, stride, stride}, WeightFormat::kInt8, 0);
    const MatrixView& q = quantized.view;
    auto slice = ColSlice(q, 32, K, "w");  // columns [32, 32 + K) of rows `stride` bytes apart
    ASSERT_TRUE(slice.ok()) << slice.status();
    const MatrixView views[] = {RowSlice(*slice, 0, 9), RowSlice(*slice, 9, rows - 9)};
    std::vector<float> x(M * K);
    for (auto& v : x) v = normal(rng);
    x[3 * K + 5] = 40.0f;                      // one large value sets a row's scale
    std::fill_n(x.begin() + 7 * K, K, 0.0f);  // a zero row
    std::vector<float> got(M * rows);
    const bool ran = MatMulInt8Activations(x.data(), M, K, K, views, got.data(), rows);
    ASSERT_EQ(ran, HasInt8DotProducts());
    if (!ran) {
      std::printf("this CPU has no AVX512-VNNI: only the kernel's refusal is checked here\n");
      continue;
    }
    for (int64_t m = 0; m < M; ++m) {
      std::vector<int> qx;
      const float amax = QuantizeRowForReference(&x[m * K], K, &qx);
      for (int64_t n = 0; n < rows; ++n) {
        int64_t dot = 0;
        for (int64_t k = 0; k < K; ++k) dot += int64_t{qx[k]} * static_cast<int8_t>(slice->codes[n * slice->stride + k]);
        const double ref = double(dot) * (amax / 127.0f) * slice->scales[n];
        ASSERT_NEAR(got[m * rows + n], ref, 1e-6 * (1 + std::abs(ref))) << m << "," << n;
      }
    }
    ExpectTheSameRowsInSmallerCalls(x, K, views, rows, got);
  }
  // A bf16 view is not the kernel's: it declines.
  std::vector<uint16_t> w(4 * 64, F32ToBf16(1.0f));
  const MatrixView b{w.data(), 4, 64, 64};
  std::vector<float> x(64, 1.0f), out(4);
  EXPECT_FALSE(MatMulInt8Activations(x.data(), 1, 64, 64, std::span<const MatrixView>(&b, 1), out.data(), 4));
  // A row holding NaN, infinity, or values too small to scale has no int8 form: the f32 kernel carries that row,
  // and the rows beside it keep the results they have alone; x and the output wider than K and the rows, so a
  // wrong stride shows.
  if (!HasInt8DotProducts()) GTEST_SKIP() << "this CPU has no AVX512-VNNI";
  const QuantizedMatrix quantized = Quantize(b, 0, 4, 0, 64, WeightFormat::kInt8, 0);
  const MatrixView& q = quantized.view;
  const std::span<const MatrixView> qv(&q, 1);
  constexpr int64_t kLdx = 80, kLdo = 7, kRows = 4;
  std::vector<float> good(64);
  for (int k = 0; k < 64; ++k) good[k] = 0.25f * (k % 7) - 0.5f;
  std::vector<float> good_alone(kRows);
  ASSERT_TRUE(MatMulInt8Activations(good.data(), 1, 64, 64, qv, good_alone.data(), kRows));
  for (const float bad : {std::nanf(""), INFINITY, 1e-40f}) {
    // One bad row at each place, and two together (carried by one f32 call).
    const std::pair<int64_t, int64_t> runs[] = {{0, 0}, {1, 1}, {2, 2}, {0, 1}, {1, 2}};
    for (const std::pair<int64_t, int64_t>& bad_rows : runs) {
      auto is_bad = [&](int64_t m) { return m >= bad_rows.first && m <= bad_rows.second; };
      std::vector<float> rows(3 * kLdx, 0.0f);
      for (int64_t m = 0; m < 3; ++m) {
        if (is_bad(m)) {
          rows[m * kLdx + 5] = bad;
        } else {
          std::copy(good.begin(), good.end(), rows.begin() + m * kLdx);
        }
      }
      std::vector<float> got(3 * kLdo, -1.0f), f32(kRows);
      ASSERT_TRUE(MatMulInt8Activations(rows.data(), 3, 64, kLdx, qv, got.data(), kLdo));
      MatMul(rows.data() + bad_rows.first * kLdx, 1, 64, kLdx, qv, f32.data(), kRows);
      for (int64_t m = 0; m < 3; ++m) {
        for (int64_t n = 0; n < kRows; ++n) {
          const float want = is_bad(m) ? f32[n] : good_alone[n];
          if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(got[m * kLdo + n])) << bad << " row " << m;
          } else {
            EXPECT_EQ(got[m * kLdo + n], want) << bad << " row " << m;
          }
        }
        for (int64_t n = kRows; n < kLdo; ++n) EXPECT_EQ(got[m * kLdo + n], -1.0f) << "written past the rows";
      }
    }
  }
}

// int8 activations over 4-bit weights (W4A8): each token quantized as above, each group's integer sums of codes
// times the token's codes exact, then scaled, less the zero point times the token's sum over the group; bit for
// bit alike for any batch; groups of 32, 64 and 128, K with a partial 128-element block, two row views and a column
// slice (a tensor-parallel rank's view, its groups whole). Without VNNI the kernel declines.
TEST(MatMulTest, Int8ActivationsOver4BitWeightsSumEachGroupForAnyBatch) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal;
  for (const int group : {32, 64, 128}) {
    for (const int64_t K : {int64_t{256}, int64_t{group} * 3, int64_t{2048} + group}) {
      const int64_t rows = 13, M = 9, offset = group, stride = K + 2 * group;
      std::vector<uint16_t> w(rows * stride);
      for (auto& v : w) v = F32ToBf16(normal(rng));
      const QuantizedMatrix quantized =
          Quantize(MatrixView{w.data(), rows, stride, stride}, WeightFormat::kInt4, group);
      const MatrixView& q4 = quantized.view;
      auto slice = ColSlice(q4, offset, K, "w");
      ASSERT_TRUE(slice.ok()) << slice.status();
      const MatrixView views[] = {RowSlice(*slice, 0, 5), RowSlice(*slice, 5, rows - 5)};
      std::vector<float> x(M * K);
      for (auto& v : x) v = normal(rng);
      x[2 * K + 7] = -30.0f;                     // one large value sets a row's scale
      std::fill_n(x.begin() + 4 * K, K, 0.0f);  // a zero row
      std::vector<float> got(M * rows);
      const bool ran = MatMulInt8Activations(x.data(), M, K, K, views, got.data(), rows);
      ASSERT_EQ(ran, HasInt8DotProducts());
      if (!ran) {
        std::printf("this CPU has no AVX512-VNNI: only the kernel's refusal is checked here\n");
        return;
      }
      for (int64_t m = 0; m < M; ++m) {
        std::vector<int> qx;
        const float amax = QuantizeRowForReference(&x[m * K], K, &qx);
        for (int64_t n = 0; n < rows; ++n) {
          double ref = 0;
          for (int64_t g = 0; g < K / group; ++g) {
            int64_t dot = 0, sum = 0;
            for (int64_t k = g * group; k < (g + 1) * group; ++k) {
              const uint8_t byte = slice->codes[n * (slice->stride / 2) + k / 2];
              dot += int64_t{qx[k]} * (k % 2 == 0 ? (byte & 0xF) : (byte >> 4));
              sum += qx[k];
            }
            const int64_t at = n * slice->scale_stride + g;
            ref += double(slice->scales[at]) * (double(dot) - double(slice->zeros[at]) * double(sum));
          }
          ref *= amax / 127.0f;
          double scale = 0;  // the size of the terms, for the bound on f32 rounding
          for (int64_t k = 0; k < K; ++k) scale += std::abs(double(x[m * K + k]) * ElementAt(*slice, n, k));
          ASSERT_NEAR(got[m * rows + n], ref, 1e-5 * (1 + scale)) << group << "," << K << ": " << m << "," << n;
        }
      }
      ExpectTheSameRowsInSmallerCalls(x, K, views, rows, got);
    }
  }
}

}  // namespace
}  // namespace gemma
