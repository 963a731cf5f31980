#include "shard/cpu/ops.h"

#include <algorithm>
#include <cmath>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "shard/cpu/ops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"
#include "shard/model/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace gemma {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;

float SumSquares(const float* x, int64_t n) {
  const DF df;
  const int64_t N = hn::Lanes(df);
  auto acc = hn::Zero(df);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(df, x + i);
    acc = hn::MulAdd(v, v, acc);
  }
  float s = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

float Dot(const float* a, const float* b, int64_t n) {
  const DF df;
  const int64_t N = hn::Lanes(df);
  auto acc0 = hn::Zero(df);
  auto acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), acc1);
  }
  for (; i + N <= n; i += N) acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
  float s = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += alpha * x
void Axpy(float alpha, const float* x, float* y, int64_t n) {
  const DF df;
  const int64_t N = hn::Lanes(df);
  const auto va = hn::Set(df, alpha);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::MulAdd(va, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void RmsNormImpl(const float* x, const float* w1p, float eps, float* out, int64_t n) {
  const float inv = 1.0f / std::sqrt(SumSquares(x, n) / static_cast<float>(n) + eps);
  const DF df;
  const int64_t N = hn::Lanes(df);
  const auto vinv = hn::Set(df, inv);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(df, x + i), vinv), hn::LoadU(df, w1p + i)), df, out + i);
  }
  for (; i < n; ++i) out[i] = x[i] * inv * w1p[i];
}

void GeluTanhMulImpl(const float* gate, const float* up, float* out, int64_t n) {
  const DF df;
  const int64_t N = hn::Lanes(df);
  const auto half = hn::Set(df, 0.5f);
  const auto one = hn::Set(df, 1.0f);
  const auto c0 = hn::Set(df, 0.7978845608028654f);  // sqrt(2/pi)
  const auto c1 = hn::Set(df, 0.044715f);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto x = hn::LoadU(df, gate + i);
    const auto inner = hn::Mul(c0, hn::MulAdd(hn::Mul(c1, hn::Mul(x, x)), x, x));
    const auto g = hn::Mul(hn::Mul(half, x), hn::Add(one, hn::Tanh(df, inner)));
    hn::StoreU(hn::Mul(g, hn::LoadU(df, up + i)), df, out + i);
  }
  for (; i < n; ++i) {
    const float x = gate[i];
    const float g = 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    out[i] = g * up[i];
  }
}

void AddInPlaceImpl(const float* x, float* y, int64_t n) { Axpy(1.0f, x, y, n); }

struct F32KvRows {
  const float* base;
  explicit F32KvRows(const KvRows& r) : base(static_cast<const float*>(r.base)) {}
  HWY_INLINE hn::Vec<DF> Widen(int64_t at) const { return hn::LoadU(DF(), base + at); }
  const void* Address(int64_t at) const { return base + at; }
  int64_t RowBytes(int64_t head_dim) const { return 4 * head_dim; }
  float Element(int64_t at) const { return base[at]; }
  float RowScale(int64_t) const { return 1.0f; }
};

// K/V rows in their stored dtype: Widen(at) gives N elements from element `at` as f32, Element(at) one, and a
// row's dot product or softmax weight is scaled once by RowScale(row).
struct Bf16KvRows {
  const uint16_t* base;
  explicit Bf16KvRows(const KvRows& r) : base(static_cast<const uint16_t*>(r.base)) {}
  HWY_INLINE hn::Vec<DF> Widen(int64_t at) const {
    const DF df;
    const hn::Rebind<uint16_t, DF> d16;
    const hn::RebindToUnsigned<DF> du;
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, base + at))));
  }
  float Element(int64_t at) const { return Bf16ToF32(base[at]); }
  const void* Address(int64_t at) const { return base + at; }
  int64_t RowBytes(int64_t head_dim) const { return 2 * head_dim; }
  float RowScale(int64_t) const { return 1.0f; }
};

struct Int8KvRows {
  const int8_t* base;
  const float* scales;
  int64_t head_dim;
  Int8KvRows(const KvRows& r, int64_t d) : base(static_cast<const int8_t*>(r.base)), scales(r.scales), head_dim(d) {}
  HWY_INLINE hn::Vec<DF> Widen(int64_t at) const {
    const DF df;
    const hn::Rebind<int8_t, DF> d8;
    const hn::Rebind<int32_t, DF> d32;
    return hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d8, base + at)));
  }
  float Element(int64_t at) const { return static_cast<float>(base[at]); }
  const void* Address(int64_t at) const { return base + at; }
  int64_t RowBytes(int64_t head_dim) const { return head_dim; }
  float RowScale(int64_t row) const { return scales[row / head_dim]; }
};

constexpr int kPrefetchKeys = 8;

HWY_INLINE void Prefetch(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b);
}

// Capped scores of G heads (q_h at q + h * head_dim) against keys [first, end), two keys at a time: 2G independent
// chains of multiply-adds, each K vector loaded once for every head. scores[h * n + i].
template <int G, class KRows, class RowOf>
void SegmentScores(const float* q, int head_dim, const KRows& keys, const RowOf& row_of, int first, int end,
                   float softcap, float* scores, int64_t n) {
  const DF df;
  const int64_t N = hn::Lanes(df);
  const int64_t full = head_dim / N * N;
  auto finish = [&](const hn::Vec<DF>& acc, int64_t row, int h) {
    float s = hn::GetLane(hn::SumOfLanes(df, acc));
    for (int64_t d = full; d < head_dim; ++d) s += q[h * head_dim + d] * keys.Element(row + d);
    s *= keys.RowScale(row);
    return softcap > 0 ? softcap * std::tanh(s / softcap) : s;
  };
  int j = first;
  for (; j + 2 <= end; j += 2) {
    const int64_t r0 = row_of(j), r1 = row_of(j + 1);
    // Rows come a block of positions at a time, blocks scattered over the cache: fetch a few keys ahead.
    if (j + kPrefetchKeys + 1 < end) {
      Prefetch(keys.Address(row_of(j + kPrefetchKeys)), keys.RowBytes(head_dim));
      Prefetch(keys.Address(row_of(j + kPrefetchKeys + 1)), keys.RowBytes(head_dim));
    }
    hn::Vec<DF> a0[G], a1[G];
    for (int h = 0; h < G; ++h) a0[h] = a1[h] = hn::Zero(df);
    for (int64_t d = 0; d < full; d += N) {
      const auto k0 = keys.Widen(r0 + d), k1 = keys.Widen(r1 + d);
      for (int h = 0; h < G; ++h) {
        const auto qv = hn::LoadU(df, q + h * head_dim + d);
        a0[h] = hn::MulAdd(qv, k0, a0[h]);
        a1[h] = hn::MulAdd(qv, k1, a1[h]);
      }
    }
    for (int h = 0; h < G; ++h) {
      scores[h * n + (j - first)] = finish(a0[h], r0, h);
      scores[h * n + (j + 1 - first)] = finish(a1[h], r1, h);
    }
  }
  for (; j < end; ++j) {  // the same chain as a key of a pair
    const int64_t r0 = row_of(j);
    hn::Vec<DF> a0[G];
    for (int h = 0; h < G; ++h) a0[h] = hn::Zero(df);
    for (int64_t d = 0; d < full; d += N) {
      const auto k0 = keys.Widen(r0 + d);
      for (int h = 0; h < G; ++h) a0[h] = hn::MulAdd(hn::LoadU(df, q + h * head_dim + d), k0, a0[h]);
    }
    for (int h = 0; h < G; ++h) scores[h * n + (j - first)] = finish(a0[h], r0, h);
  }
}

// out_h = sum_j p_h[j] v_j for G heads, keys in order: kValueVectors vectors of the output at a time stay in registers
// over every key of the segment (the segment's V rows stay in L2 between the passes), each V vector loaded once
// for every head.
#if HWY_TARGET <= HWY_AVX3
constexpr int kValueVectors = 4;  // G x 4 accumulators of 32 registers
#else
constexpr int kValueVectors = 2;  // of 16
#endif

// Columns [d0, d0 + V * N) of the G heads' outputs.
template <int G, int V, class VRows, class RowOf>
HWY_INLINE void ValuePass(const float* p, int64_t n, const VRows& values, const RowOf& row_of, int first,
                          int head_dim, int64_t d0, float* out) {
  const DF df;
  const int64_t N = hn::Lanes(df);
  hn::Vec<DF> acc[G][V];
  for (int h = 0; h < G; ++h)
    for (int v = 0; v < V; ++v) acc[h][v] = hn::Zero(df);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = row_of(first + static_cast<int>(i));
    if (d0 == 0 && i + kPrefetchKeys < n) {  // later passes find the segment's rows in L2
      Prefetch(values.Address(row_of(first + static_cast<int>(i + kPrefetchKeys))), values.RowBytes(head_dim));
    }
    const float scale = values.RowScale(row);
    hn::Vec<DF> vv[V];
    for (int v = 0; v < V; ++v) vv[v] = values.Widen(row + d0 + v * N);
    for (int h = 0; h < G; ++h) {
      const auto a = hn::Set(df, p[h * n + i] * scale);
      for (int v = 0; v < V; ++v) acc[h][v] = hn::MulAdd(a, vv[v], acc[h][v]);
    }
  }
  for (int h = 0; h < G; ++h)
    for (int v = 0; v < V; ++v) hn::StoreU(acc[h][v], df, out + h * head_dim + d0 + v * N);
}

template <int G, class VRows, class RowOf>
void SegmentValues(const float* p, int64_t n, const VRows& values, const RowOf& row_of, int first, int head_dim,
                   float* out) {
  const int64_t N = hn::Lanes(DF());
  int64_t d0 = 0;
  for (; d0 + kValueVectors * N <= head_dim; d0 += kValueVectors * N) {
    ValuePass<G, kValueVectors>(p, n, values, row_of, first, head_dim, d0, out);
  }
  for (; d0 + N <= head_dim; d0 += N) ValuePass<G, 1>(p, n, values, row_of, first, head_dim, d0, out);
  const int64_t full = d0;
  for (int64_t d = full; d < head_dim; ++d) {  // fewer than N columns left
    for (int h = 0; h < G; ++h) {
      float sum = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t row = row_of(first + static_cast<int>(i));
        sum += p[h * n + i] * values.RowScale(row) * values.Element(row + d);
      }
      out[h * head_dim + d] = sum;
    }
  }
}

template <class KRows, class VRows>
void AttendSegmentT(const float* q, int heads, const KRows& keys, const VRows& values, const PagedKv& kv, int first,
                    int end, int head_dim, float softcap, float* scores, float* max, float* sum, float* out) {
  const int64_t n = end - first;
  auto row_of = [&](int j) {
    return kv.blocks.Block(j / kv.block_size) * kv.block_stride + kv.head_offset +
           static_cast<int64_t>(j % kv.block_size) * head_dim;
  };
  // Heads in groups of up to 4 (8 chains of two keys); a head's arithmetic is the same in any group.
  for (int h0 = 0; h0 < heads; h0 += 4) {
    const int g = std::min(4, heads - h0);
    const float* qg = q + h0 * head_dim;
    float* sg = scores + h0 * n;
    switch (g) {
      case 4: SegmentScores<4>(qg, head_dim, keys, row_of, first, end, softcap, sg, n); break;
      case 3: SegmentScores<3>(qg, head_dim, keys, row_of, first, end, softcap, sg, n); break;
      case 2: SegmentScores<2>(qg, head_dim, keys, row_of, first, end, softcap, sg, n); break;
      default: SegmentScores<1>(qg, head_dim, keys, row_of, first, end, softcap, sg, n); break;
    }
  }
  for (int h = 0; h < heads; ++h) {
    float* s = scores + h * n;
    float m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, s[i]);
    float total = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      s[i] = std::exp(s[i] - m);
      total += s[i];
    }
    max[h] = m;
    sum[h] = total;
  }
  for (int h0 = 0; h0 < heads; h0 += 4) {
    const int g = std::min(4, heads - h0);
    const float* pg = scores + h0 * n;
    float* og = out + h0 * head_dim;
    switch (g) {
      case 4: SegmentValues<4>(pg, n, values, row_of, first, head_dim, og); break;
      case 3: SegmentValues<3>(pg, n, values, row_of, first, head_dim, og); break;
      case 2: SegmentValues<2>(pg, n, values, row_of, first, head_dim, og); break;
      default: SegmentValues<1>(pg, n, values, row_of, first, head_dim, og); break;
    }
  }
}

void AttendSegmentImpl(const float* q, int heads, const PagedKv& kv, int first, int end, int head_dim,
                       float softcap, float* scores, float* max, float* sum, float* out) {
  switch (kv.k.dtype) {
    case KvCacheDtype::kBF16:
      return AttendSegmentT(q, heads, Bf16KvRows(kv.k), Bf16KvRows(kv.v), kv, first, end, head_dim, softcap, scores,
                            max, sum, out);
    case KvCacheDtype::kInt8:
      return AttendSegmentT(q, heads, Int8KvRows(kv.k, head_dim), Int8KvRows(kv.v, head_dim), kv, first, end,
                            head_dim, softcap, scores, max, sum, out);
    default:
      return AttendSegmentT(q, heads, F32KvRows(kv.k), F32KvRows(kv.v), kv, first, end, head_dim, softcap, scores,
                            max, sum, out);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace gemma
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gemma {

HWY_EXPORT(RmsNormImpl);
HWY_EXPORT(GeluTanhMulImpl);
HWY_EXPORT(AddInPlaceImpl);
HWY_EXPORT(AttendSegmentImpl);
HWY_EXPORT(Dot);

void RmsNorm(const float* x, const float* w1p, float eps, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(RmsNormImpl)(x, w1p, eps, out, n);
}
void GeluTanhMul(const float* gate, const float* up, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(GeluTanhMulImpl)(gate, up, out, n);
}
void AddInPlace(const float* x, float* y, int64_t n) { HWY_DYNAMIC_DISPATCH(AddInPlaceImpl)(x, y, n); }
float DotF32(const float* a, const float* b, int64_t n) { return HWY_DYNAMIC_DISPATCH(Dot)(a, b, n); }
// Scalar: std::tanh is what the reference's float32 tanh rounds like; Highway's Tanh is an approximation.
void SoftCap(float cap, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}
void AttendSegment(const float* q, int heads, const PagedKv& kv, int first, int end, int head_dim, float softcap,
                   float* scores, float* max, float* sum, float* out) {
  HWY_DYNAMIC_DISPATCH(AttendSegmentImpl)(q, heads, kv, first, end, head_dim, softcap, scores, max, sum, out);
}

void CombineSegments(int segments, const float* max, const float* sum, const float* out, int64_t stride,
                     int head_dim, float* result) {
  float m = -INFINITY;
  for (int s = 0; s < segments; ++s) m = std::max(m, max[s * stride]);
  float total = 0.0f;
  for (int s = 0; s < segments; ++s) total += std::exp(max[s * stride] - m) * sum[s * stride];
  const float inv = 1.0f / total;
  for (int d = 0; d < head_dim; ++d) result[d] = 0.0f;
  for (int s = 0; s < segments; ++s) {
    const float w = std::exp(max[s * stride] - m) * inv;
    const float* o = out + s * stride;
    for (int d = 0; d < head_dim; ++d) result[d] += w * o[d];
  }
}

}  // namespace gemma
#endif
