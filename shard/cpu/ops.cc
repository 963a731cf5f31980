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

// K/V rows in their stored dtype: Dot(q, row) and Axpy(a, row, out) over head_dim elements, widened to f32.
struct F32KvRows {
  const float* base;
  explicit F32KvRows(const KvRows& r) : base(static_cast<const float*>(r.base)) {}
  float Dot(const float* q, int64_t row, int64_t n) const { return gemma::HWY_NAMESPACE::Dot(q, base + row, n); }
  void Axpy(float a, int64_t row, float* out, int64_t n) const { gemma::HWY_NAMESPACE::Axpy(a, base + row, out, n); }
};

// Narrow rows: `Widen(p)` gives N elements at p as f32; a row's sum is scaled once (RowScale).
template <class Derived>
struct NarrowKvRows {
  float Dot(const float* q, int64_t row, int64_t n) const {
    const DF df;
    const int64_t N = hn::Lanes(df);
    const auto& self = static_cast<const Derived&>(*this);
    auto acc = hn::Zero(df);
    int64_t i = 0;
    for (; i + N <= n; i += N) acc = hn::MulAdd(hn::LoadU(df, q + i), self.Widen(row + i), acc);
    float s = hn::GetLane(hn::SumOfLanes(df, acc));
    for (; i < n; ++i) s += q[i] * self.Element(row + i);
    return s * self.RowScale(row);
  }
  void Axpy(float a, int64_t row, float* out, int64_t n) const {
    const DF df;
    const int64_t N = hn::Lanes(df);
    const auto& self = static_cast<const Derived&>(*this);
    const float as = a * self.RowScale(row);
    const auto va = hn::Set(df, as);
    int64_t i = 0;
    for (; i + N <= n; i += N) hn::StoreU(hn::MulAdd(va, self.Widen(row + i), hn::LoadU(df, out + i)), df, out + i);
    for (; i < n; ++i) out[i] += as * self.Element(row + i);
  }
};

struct Bf16KvRows : NarrowKvRows<Bf16KvRows> {
  const uint16_t* base;
  explicit Bf16KvRows(const KvRows& r) : base(static_cast<const uint16_t*>(r.base)) {}
  HWY_INLINE hn::Vec<DF> Widen(int64_t at) const {
    const DF df;
    const hn::Rebind<uint16_t, DF> d16;
    const hn::RebindToUnsigned<DF> du;
    return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, base + at))));
  }
  float Element(int64_t at) const { return Bf16ToF32(base[at]); }
  float RowScale(int64_t) const { return 1.0f; }
};

struct Int8KvRows : NarrowKvRows<Int8KvRows> {
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
  float RowScale(int64_t row) const { return scales[row / head_dim]; }
};

template <class KRows, class VRows>
void Attend(const float* q, const KRows& keys, const VRows& values, const PagedKv& kv, int first, int end,
            int head_dim, float softcap, float* scores, float* out) {
  const int n = end - first;
  auto row_of = [&](int j) {
    return kv.blocks.Block(j / kv.block_size) * kv.block_stride + kv.head_offset +
           static_cast<int64_t>(j % kv.block_size) * head_dim;
  };
  float max_score = -INFINITY;
  for (int i = 0; i < n; ++i) {
    float s = keys.Dot(q, row_of(first + i), head_dim);
    if (softcap > 0) s = softcap * std::tanh(s / softcap);
    scores[i] = s;
    max_score = std::max(max_score, s);
  }
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    scores[i] = std::exp(scores[i] - max_score);
    sum += scores[i];
  }
  const float inv = 1.0f / sum;
  for (int d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (int i = 0; i < n; ++i) values.Axpy(scores[i] * inv, row_of(first + i), out, head_dim);
}

void AttendOneHeadImpl(const float* q, const PagedKv& kv, int first, int end, int head_dim, float softcap,
                       float* scores, float* out) {
  switch (kv.k.dtype) {
    case KvCacheDtype::kBF16:
      return Attend(q, Bf16KvRows(kv.k), Bf16KvRows(kv.v), kv, first, end, head_dim, softcap, scores, out);
    case KvCacheDtype::kInt8:
      return Attend(q, Int8KvRows(kv.k, head_dim), Int8KvRows(kv.v, head_dim), kv, first, end, head_dim, softcap,
                    scores, out);
    default:
      return Attend(q, F32KvRows(kv.k), F32KvRows(kv.v), kv, first, end, head_dim, softcap, scores, out);
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
HWY_EXPORT(AttendOneHeadImpl);
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
void AttendOneHead(const float* q, const PagedKv& kv, int first, int end, int head_dim, float softcap, float* scores,
                   float* out) {
  HWY_DYNAMIC_DISPATCH(AttendOneHeadImpl)(q, kv, first, end, head_dim, softcap, scores, out);
}

}  // namespace gemma
#endif
