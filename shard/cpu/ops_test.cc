// Grouped-query attention over segments (AttendSegment + CombineSegments) against a double-precision softmax over
// the same stored K and V, on every instruction set built in: f32, bf16 and int8 rows, head counts that fill the
// groups of four and do not, a head_dim with a tail past the SIMD vectors, soft-capping, and rows of several
// segments.
#include "shard/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "shard/model/dtype.h"

namespace gemma {
namespace {

struct StoredKv {
  KvCacheDtype dtype;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  std::vector<int8_t> i8;
  std::vector<float> scales;  // int8: one per row
  KvRows rows() const {
    switch (dtype) {
      case KvCacheDtype::kBF16: return {dtype, bf16.data(), nullptr};
      case KvCacheDtype::kInt8: return {dtype, i8.data(), scales.data()};
      default: return {dtype, f32.data(), nullptr};
    }
  }
  double At(int64_t i, int head_dim) const {
    switch (dtype) {
      case KvCacheDtype::kBF16: return Bf16ToF32(bf16[i]);
      case KvCacheDtype::kInt8: return double(i8[i]) * scales[i / head_dim];
      default: return f32[i];
    }
  }
};

StoredKv Store(KvCacheDtype dtype, const std::vector<float>& values, int head_dim) {
  StoredKv s{dtype, {}, {}, {}, {}};
  if (dtype == KvCacheDtype::kF32) s.f32 = values;
  if (dtype == KvCacheDtype::kBF16) {
    for (float v : values) s.bf16.push_back(F32ToBf16(v));
  }
  if (dtype == KvCacheDtype::kInt8) {
    for (size_t r = 0; r < values.size() / head_dim; ++r) {
      float m = 0;
      for (int d = 0; d < head_dim; ++d) m = std::max(m, std::abs(values[r * head_dim + d]));
      const float scale = m / 127;
      s.scales.push_back(scale);
      for (int d = 0; d < head_dim; ++d) {
        s.i8.push_back(static_cast<int8_t>(std::lround(values[r * head_dim + d] / scale)));
      }
    }
  }
  return s;
}

TEST(AttentionTest, SegmentsCombinedEqualTheSoftmaxOverEveryKey) {
  constexpr int kBlock = 16;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    std::mt19937 rng(5);
    std::normal_distribution<float> normal;
    for (const KvCacheDtype dtype : {KvCacheDtype::kF32, KvCacheDtype::kBF16, KvCacheDtype::kInt8}) {
      for (const int head_dim : {256, 72, 48}) {
        for (const int heads : {1, 3, 4, 8}) {
          for (const int n : {1, 37, 2 * kAttentionSegment + 89}) {
            for (const float softcap : {0.0f, 50.0f}) {
              SCOPED_TRACE(std::to_string(static_cast<int>(dtype)) + " head_dim " + std::to_string(head_dim) +
                           " heads " + std::to_string(heads) + " keys " + std::to_string(n) + " softcap " +
                           std::to_string(softcap));
              // Keys 3..3+n of a sequence whose blocks lie in the cache out of order.
              const int first = 3, end = first + n;
              const int blocks = (end + kBlock - 1) / kBlock;
              std::vector<int32_t> table(blocks);
              for (int b = 0; b < blocks; ++b) table[b] = (b * 7 + 3) % blocks;
              std::vector<float> kf(static_cast<size_t>(blocks) * kBlock * head_dim), vf(kf.size());
              for (auto& e : kf) e = normal(rng) * 0.6f;
              for (auto& e : vf) e = normal(rng);
              const StoredKv k = Store(dtype, kf, head_dim), v = Store(dtype, vf, head_dim);
              std::vector<float> q(heads * head_dim);
              for (auto& e : q) e = normal(rng) * 0.5f;
              const PagedKv kv{k.rows(), v.rows(), {table.data(), 1, 0}, kBlock, int64_t{kBlock} * head_dim, 0};

              const int segments = (n + kAttentionSegment - 1) / kAttentionSegment;
              const int64_t slot = heads * (2 + head_dim);
              std::vector<float> parts(segments * slot), scores(heads * kAttentionSegment);
              for (int s = 0; s < segments; ++s) {
                const int s_first = first + s * kAttentionSegment;
                float* p = &parts[s * slot];
                AttendSegment(q.data(), heads, kv, s_first, std::min(end, s_first + kAttentionSegment), head_dim,
                              softcap, scores.data(), p, p + heads, p + 2 * heads);
              }
              for (int h = 0; h < heads; ++h) {
                std::vector<float> got(head_dim);
                CombineSegments(segments, &parts[h], &parts[heads + h], &parts[2 * heads + h * head_dim], slot,
                                head_dim, got.data());
                auto row_of = [&](int j) {
                  return int64_t{table[j / kBlock]} * kBlock * head_dim +
                         (j % kBlock) * head_dim;
                };
                std::vector<double> s(n);
                double m = -INFINITY;
                for (int j = 0; j < n; ++j) {
                  double dot = 0;
                  for (int d = 0; d < head_dim; ++d)
                    dot += double(q[h * head_dim + d]) *
                           k.At(row_of(first + j) + d, head_dim);
                  s[j] = softcap > 0 ? softcap * std::tanh(dot / softcap) : dot;
                  m = std::max(m, s[j]);
                }
                double total = 0;
                for (double& e : s) total += (e = std::exp(e - m));
                for (int d = 0; d < head_dim; ++d) {
                  double want = 0;
                  for (int j = 0; j < n; ++j) want += s[j] / total * v.At(row_of(first + j) + d, head_dim);
                  ASSERT_NEAR(got[d], want, 2e-5 * (1 + std::abs(want))) << "head " << h << " element " << d;
                }
              }
            }
          }
        }
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace
}  // namespace gemma
