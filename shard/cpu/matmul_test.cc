#include "shard/cpu/matmul.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "shard/model/dtype.h"

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

}  // namespace
}  // namespace gemma
