#include "shard/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "shard/model/dtype.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "shard/cpu/matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/aligned_allocator.h"

HWY_BEFORE_NAMESPACE();
namespace gemma {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DU = hn::RebindToUnsigned<DF>;
using VF = hn::Vec<DF>;

// Register tiles. Few tokens: one weight row at a time, one sequential stream
// per thread (memory-bound decode). More tokens: kTileRows rows x 2 tokens so
// each loaded x vector feeds several rows (compute-bound prefill).
#if HWY_TARGET <= HWY_AVX3
constexpr int kTileRows = 4;
#else
constexpr int kTileRows = 2;
#endif
constexpr int kStreamTokens = 4;  // up to this many tokens use the one-row kernel
constexpr int kBlockTokens = 4;
// Bytes of packed x kept hot in L2 while one thread's rows stream past it.
constexpr int64_t kPanelBytes = 384 << 10;

// A format's block b holds 2N elements of a row, as two vectors: even/odd (the N even elements of
// [2Nb, 2Nb + 2N), then the N odd ones) where the stored form pairs neighbours (bf16 pairs in a u32, two 4-bit
// codes in a byte): one shift and one mask then split them, no shuffles. Plain (elements [2Nb, 2Nb + N), then
// the next N) elsewhere. x is packed the same way once per call.
enum class Layout { kEvenOdd, kPlain };

void PackX(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t packed_stride, Layout layout, float* xp) {
  const int64_t n2 = 2 * static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t full = K / n2;
#pragma omp parallel for schedule(static) if (M > 4)
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * ldx;
    float* dst = xp + m * packed_stride;
    if (layout == Layout::kPlain) {
      std::copy_n(src, full * n2, dst);
      continue;
    }
    for (int64_t b = 0; b < full; ++b) {
      const float* s = src + b * n2;
      float* d = dst + b * n2;
      for (int64_t i = 0; i < n2 / 2; ++i) {
        d[i] = s[2 * i];
        d[n2 / 2 + i] = s[2 * i + 1];
      }
    }
  }
}

// Sums of each 32 elements of x ([M][K / 32]), for grouped formats' zero points: sum_k (c - z) s x = s sum_k c x -
// z s sum_k x.
constexpr int64_t kChunk = 32;
void ChunkSums(const float* x, int64_t M, int64_t K, int64_t ldx, float* sums) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = 0; c < K / kChunk; ++c) {
      float s = 0;
      for (int64_t k = 0; k < kChunk; ++k) s += x[m * ldx + c * kChunk + k];
      sums[m * (K / kChunk) + c] = s;
    }
  }
}

// Weight decoders: block b of row r as two f32 vectors (lo, hi) in the format's layout; Scalar gives one element
// of the tail, Finish turns a row's sum into its output. Ungrouped formats sum w x over the whole row; grouped
// ones (kGrouped) sum c x over each group of columns and apply the group's scale and zero once per group.
struct Bf16Rows {
  static constexpr Layout kLayout = Layout::kEvenOdd;
  static constexpr bool kGrouped = false;
  const uint16_t* w;
  int64_t stride;
  explicit Bf16Rows(const MatrixView& m) : w(m.data), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return w + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return 2 * stride; }
  HWY_INLINE void Block(int64_t r, int64_t b, VF& lo, VF& hi) const {
    const DF df;
    const DU du;
    const auto u = hn::LoadU(du, static_cast<const uint32_t*>(Address(r, b)));
    lo = hn::BitCast(df, hn::ShiftLeft<16>(u));
    hi = hn::BitCast(df, hn::And(u, hn::Set(du, 0xFFFF0000u)));
  }
  float Scalar(int64_t r, int64_t k) const { return Bf16ToF32(w[r * stride + k]); }
  float Finish(int64_t, float sum) const { return sum; }
};

struct F32Rows {
  static constexpr Layout kLayout = Layout::kPlain;
  static constexpr bool kGrouped = false;
  const float* w;
  int64_t stride;
  explicit F32Rows(const MatrixView& m) : w(m.f32), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return w + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return 4 * stride; }
  HWY_INLINE void Block(int64_t r, int64_t b, VF& lo, VF& hi) const {
    const DF df;
    const float* p = static_cast<const float*>(Address(r, b));
    lo = hn::LoadU(df, p);
    hi = hn::LoadU(df, p + hn::Lanes(df));
  }
  float Scalar(int64_t r, int64_t k) const { return w[r * stride + k]; }
  float Finish(int64_t, float sum) const { return sum; }
};

// Sums code x over the row and scales once at the end: one sign-extending load and one conversion per N codes.
struct Int8Rows {
  static constexpr Layout kLayout = Layout::kPlain;
  static constexpr bool kGrouped = false;
  const uint8_t* codes;
  const float* scales;
  int64_t stride;
  explicit Int8Rows(const MatrixView& m) : codes(m.codes), scales(m.scales), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return codes + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return stride; }
  HWY_INLINE void Block(int64_t r, int64_t b, VF& lo, VF& hi) const {
    const DF df;
    const hn::Rebind<int8_t, DF> d8;
    const hn::Rebind<int32_t, DF> d32;
    const int8_t* p = static_cast<const int8_t*>(Address(r, b));
    lo = hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d8, p)));
    hi = hn::ConvertTo(df, hn::PromoteTo(d32, hn::LoadU(d8, p + hn::Lanes(df))));
  }
  float Scalar(int64_t r, int64_t k) const { return static_cast<float>(static_cast<int8_t>(codes[r * stride + k])); }
  float Finish(int64_t r, float sum) const { return sum * scales[r]; }
};

// E4M3 codes widened in registers: the sign moved up a bit (b + (b & 0x80)) and the byte shifted left by 7 puts the
// sign at bit 15 and exponent and mantissa at bits 13..7 of an f16, which is then the E4M3 value times 2^-8
// exactly, subnormals included (f16's exponent bias is 8 more); F16C widens it to f32. A block's 2N codes go
// through the integer steps as one vector of 16-bit lanes. Sums run over those values and Finish applies 2^8 with
// the row's scale.
struct Fp8Rows {
  static constexpr Layout kLayout = Layout::kPlain;
  static constexpr bool kGrouped = false;
  const uint8_t* codes;
  const float* scales;
  int64_t stride;
  explicit Fp8Rows(const MatrixView& m) : codes(m.codes), scales(m.scales), stride(m.stride) {}
  const void* Address(int64_t r, int64_t b) const { return codes + r * stride + b * 2 * hn::Lanes(DF()); }
  int64_t RowBytes() const { return stride; }
#if HWY_TARGET == HWY_SCALAR
  // One lane: each code on its own.
  HWY_INLINE void Block(int64_t r, int64_t b, VF& lo, VF& hi) const {
    const uint8_t* p = static_cast<const uint8_t*>(Address(r, b));
    lo = hn::Set(DF(), Fp8E4M3ToF32(p[0]) * (1.0f / 256.0f));
    hi = hn::Set(DF(), Fp8E4M3ToF32(p[1]) * (1.0f / 256.0f));
  }
#else
  HWY_INLINE void Block(int64_t r, int64_t b, VF& lo, VF& hi) const {
    const DF df;
    const hn::Repartition<uint16_t, DF> d16;  // 2N lanes
    const hn::Rebind<uint8_t, decltype(d16)> d8;
    const hn::Repartition<hwy::float16_t, DF> dh;
    const hn::Half<decltype(dh)> dh_half;
    const auto c = hn::PromoteTo(d16, hn::LoadU(d8, static_cast<const uint8_t*>(Address(r, b))));
    const auto h = hn::BitCast(dh, hn::ShiftLeft<7>(hn::Add(c, hn::And(c, hn::Set(d16, 0x80)))));
    lo = hn::PromoteTo(df, hn::LowerHalf(dh_half, h));
    hi = hn::PromoteTo(df, hn::UpperHalf(dh_half, h));
  }
#endif
  float Scalar(int64_t r, int64_t k) const { return Fp8E4M3ToF32(codes[r * stride + k]) * (1.0f / 256.0f); }
  float Finish(int64_t r, float sum) const { return sum * (scales[r] * 256.0f); }
};

// Needs 2N <= the group size (32 at the least; 2N is 32 at most), K a whole number of groups.
struct Int4Rows {
  static constexpr Layout kLayout = Layout::kEvenOdd;
  static constexpr bool kGrouped = true;
  const uint8_t* codes;
  const float* scales;
  const float* zeros;
  int64_t row_bytes, scale_stride, group_blocks;
  int group_size;
  explicit Int4Rows(const MatrixView& m)
      : codes(m.codes), scales(m.scales), zeros(m.zeros), row_bytes(m.stride / 2), scale_stride(m.scale_stride),
        group_blocks(m.group_size / (2 * static_cast<int64_t>(hn::Lanes(DF())))), group_size(m.group_size) {}
  const void* Address(int64_t r, int64_t b) const { return codes + r * row_bytes + b * hn::Lanes(DF()); }
  int64_t RowBytes() const { return row_bytes; }
  HWY_INLINE void Block(int64_t r, int64_t b, VF& lo, VF& hi) const {
    const DF df;
    const hn::Rebind<uint8_t, DF> d8;
    const hn::Rebind<uint32_t, DF> du32;
    const hn::Rebind<int32_t, DF> di32;
    const auto bytes = hn::PromoteTo(du32, hn::LoadU(d8, static_cast<const uint8_t*>(Address(r, b))));
    lo = hn::ConvertTo(df, hn::BitCast(di32, hn::And(bytes, hn::Set(du32, 0xFu))));
    hi = hn::ConvertTo(df, hn::BitCast(di32, hn::ShiftRight<4>(bytes)));
  }
  float Scale(int64_t r, int64_t g) const { return scales[r * scale_stride + g]; }
  float Zero(int64_t r, int64_t g) const { return zeros[r * scale_stride + g]; }
  float Scalar(int64_t, int64_t) const { return 0.0f; }  // no tail: K is whole groups of whole blocks
  float Finish(int64_t, float sum) const { return sum; }
};

// One block of R rows into the accumulators of T tokens.
template <int R, int T, class Rows>
HWY_INLINE void AccumulateBlock(const Rows& w, int64_t r0, int64_t b, int64_t ahead, const float* HWY_RESTRICT xp,
                                int64_t xp_stride, VF (&acc)[R][T]) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF lo[R], hi[R];
  for (int r = 0; r < R; ++r) {
    // Hardware prefetchers stop at 4 KB boundaries; a software prefetch ahead
    // keeps the weight stream flowing: 4 KB on for one row (running on into
    // the next row), the same place in the next tile of rows otherwise.
    __builtin_prefetch(static_cast<const char*>(w.Address(r0 + r, b)) + ahead);
    w.Block(r0 + r, b, lo[r], hi[r]);
  }
  for (int t = 0; t < T; ++t) {
    const VF xa = hn::Load(df, xp + t * xp_stride + b * 2 * N);
    const VF xb = hn::Load(df, xp + t * xp_stride + b * 2 * N + N);
    for (int r = 0; r < R; ++r) acc[r][t] = hn::MulAdd(hi[r], xb, hn::MulAdd(lo[r], xa, acc[r][t]));
  }
}

// R weight rows (from row r0 of `w`) against T tokens over all of K. Every output is the same sequence of
// operations whatever R and T are (one chain of FMAs per group or row, reduced, then the scalar tail), so
// results do not depend on batching. `xsums`: ChunkSums of these tokens (grouped formats only).
template <int R, int T, class Rows>
HWY_INLINE void Tile(const Rows& w, int64_t r0, const float* HWY_RESTRICT xp, int64_t xp_stride,
                     const float* HWY_RESTRICT x, int64_t ldx, const float* HWY_RESTRICT xsums, int64_t full_blocks,
                     int64_t K, float* HWY_RESTRICT out, int64_t ldo) {
  const DF df;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  const int64_t ahead = R == 1 ? 4096 : R * w.RowBytes();
  VF acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(df);
  float offset[R][T] = {};
  if constexpr (!Rows::kGrouped) {
    for (int64_t b = 0; b < full_blocks; ++b) AccumulateBlock<R, T>(w, r0, b, ahead, xp, xp_stride, acc);
  } else {
    const int64_t chunks = w.group_size / kChunk;
    for (int64_t g = 0; g * w.group_blocks < full_blocks; ++g) {
      VF part[R][T];
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) part[r][t] = hn::Zero(df);
      for (int64_t b = g * w.group_blocks; b < (g + 1) * w.group_blocks; ++b) {
        AccumulateBlock<R, T>(w, r0, b, ahead, xp, xp_stride, part);
      }
      float x_sum[T];
      for (int t = 0; t < T; ++t) {
        x_sum[t] = 0;
        for (int64_t c = 0; c < chunks; ++c) x_sum[t] += xsums[t * (K / kChunk) + g * chunks + c];
      }
      for (int r = 0; r < R; ++r) {
        const float scale = w.Scale(r0 + r, g);
        const float zero_term = -w.Zero(r0 + r, g) * scale;
        const VF s = hn::Set(df, scale);
        for (int t = 0; t < T; ++t) {
          acc[r][t] = hn::MulAdd(part[r][t], s, acc[r][t]);
          offset[r][t] = std::fma(zero_term, x_sum[t], offset[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      // An explicit fma: left to itself the compiler contracts (or vectorizes) this loop differently in each
      // instantiation, and batch sizes would no longer agree bit for bit.
      for (int64_t k = full_blocks * 2 * N; k < K; ++k) s = std::fma(w.Scalar(r0 + r, k), x[t * ldx + k], s);
      out[t * ldo + r] = w.Finish(r0 + r, s) + offset[r][t];
    }
  }
}

// Tile<R, T> for a runtime token count 1..T.
template <int R, int T, class Rows>
HWY_INLINE void TileUpTo(int tokens, const Rows& w, int64_t r0, const float* xp, int64_t xp_stride, const float* x,
                         int64_t ldx, const float* xsums, int64_t full_blocks, int64_t K, float* out, int64_t ldo) {
  if constexpr (T > 1) {
    if (tokens < T) {
      return TileUpTo<R, T - 1>(tokens, w, r0, xp, xp_stride, x, ldx, xsums, full_blocks, K, out, ldo);
    }
  }
  Tile<R, T>(w, r0, xp, xp_stride, x, ldx, xsums, full_blocks, K, out, ldo);
}

// Rows [r_begin, r_end) of one view against tokens [m0, m1).
template <class Rows>
void RowsTimesPanel(const Rows& w, int64_t r_begin, int64_t r_end, int64_t m0, int64_t m1, const float* xp,
                    int64_t xp_stride, const float* x, int64_t ldx, const float* xsums, int64_t full_blocks,
                    int64_t K, float* out, int64_t ldo) {
  const int64_t tokens = m1 - m0;
  const int64_t sums_stride = K / kChunk;
  auto sums_at = [&](int64_t m) { return xsums == nullptr ? nullptr : xsums + m * sums_stride; };
  if (tokens <= kStreamTokens) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      TileUpTo<1, kStreamTokens>(static_cast<int>(tokens), w, r, xp + m0 * xp_stride, xp_stride, x + m0 * ldx, ldx,
                                 sums_at(m0), full_blocks, K, out + m0 * ldo + r, ldo);
    }
    return;
  }
  // A grouped format holds a second set of accumulators: half the rows keep them in registers.
  constexpr int kRows = Rows::kGrouped && kTileRows > 1 ? kTileRows / 2 : kTileRows;
  int64_t r = r_begin;
  for (; r + kRows <= r_end; r += kRows) {
    for (int64_t m = m0; m < m1; m += kBlockTokens) {
      const int t = static_cast<int>(std::min<int64_t>(kBlockTokens, m1 - m));
      TileUpTo<kRows, kBlockTokens>(t, w, r, xp + m * xp_stride, xp_stride, x + m * ldx, ldx, sums_at(m),
                                    full_blocks, K, out + m * ldo + r, ldo);
    }
  }
  for (; r < r_end; ++r) {
    for (int64_t m = m0; m < m1; m += kBlockTokens) {
      const int t = static_cast<int>(std::min<int64_t>(kBlockTokens, m1 - m));
      TileUpTo<1, kBlockTokens>(t, w, r, xp + m * xp_stride, xp_stride, x + m * ldx, ldx, sums_at(m), full_blocks,
                                K, out + m * ldo + r, ldo);
    }
  }
}

Layout LayoutOf(WeightFormat format) {
  return format == WeightFormat::kBF16 || format == WeightFormat::kInt4 ? Layout::kEvenOdd : Layout::kPlain;
}

void ViewTimesPanel(const MatrixView& mv, int64_t r_begin, int64_t r_end, int64_t m0, int64_t m1, const float* xp,
                    int64_t xp_stride, const float* x, int64_t ldx, const float* xsums, int64_t full_blocks,
                    int64_t K, float* out, int64_t ldo) {
  switch (mv.format) {
    case WeightFormat::kBF16:
      return RowsTimesPanel(Bf16Rows(mv), r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, nullptr, full_blocks, K,
                            out, ldo);
    case WeightFormat::kF32:
      return RowsTimesPanel(F32Rows(mv), r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, nullptr, full_blocks, K, out,
                            ldo);
    case WeightFormat::kInt8:
      return RowsTimesPanel(Int8Rows(mv), r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, nullptr, full_blocks, K,
                            out, ldo);
    case WeightFormat::kFp8:
      return RowsTimesPanel(Fp8Rows(mv), r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, nullptr, full_blocks, K, out,
                            ldo);
    case WeightFormat::kInt4:
      return RowsTimesPanel(Int4Rows(mv), r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, xsums, full_blocks, K, out,
                            ldo);
  }
}

// All views share one layout (MatMul splits calls that mix them).
void MatMulImpl(const float* x, int64_t M, int64_t K, int64_t ldx, const MatrixView* views, size_t num_views,
                float* out, int64_t ldo) {
  const int64_t n2 = 2 * static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t full_blocks = K / n2;
  const int64_t xp_stride = std::max<int64_t>(full_blocks * n2, n2);
  thread_local hwy::AlignedFreeUniquePtr<float[]> packed;
  thread_local int64_t packed_size = 0;
  if (packed_size < M * xp_stride) {
    packed = hwy::AllocateAligned<float>(M * xp_stride);
    packed_size = M * xp_stride;
  }
  float* xp = packed.get();
  PackX(x, M, K, ldx, xp_stride, LayoutOf(views[0].format), xp);
  thread_local std::vector<float> sums;
  const float* xsums = nullptr;
  for (size_t v = 0; v < num_views; ++v) {
    if (views[v].format != WeightFormat::kInt4) continue;
    sums.resize(M * (K / kChunk));
    ChunkSums(x, M, K, ldx, sums.data());
    xsums = sums.data();
    break;
  }

  int64_t total_rows = 0;
  for (size_t v = 0; v < num_views; ++v) total_rows += views[v].rows;
  // Tokens per panel: as many as keep the panel in L2, whole tiles.
  const int64_t panel = std::max<int64_t>(kStreamTokens + 1, kPanelBytes / (xp_stride * 4) / kBlockTokens * kBlockTokens);

#pragma omp parallel
  {
    // Each thread streams one contiguous range of rows, in memory order.
    const int64_t nt = omp_get_num_threads();
    const int64_t tid = omp_get_thread_num();
    const int64_t row_begin = total_rows * tid / nt;
    const int64_t row_end = total_rows * (tid + 1) / nt;
    for (int64_t m0 = 0; m0 < M; m0 += panel) {
      const int64_t m1 = std::min(M, m0 + panel);
      int64_t first_row = 0;
      for (size_t v = 0; v < num_views && first_row < row_end; ++v) {
        const MatrixView& mv = views[v];
        const int64_t r_begin = std::max<int64_t>(row_begin - first_row, 0);
        const int64_t r_end = std::min<int64_t>(row_end - first_row, mv.rows);
        if (r_begin < r_end) {
          ViewTimesPanel(mv, r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, xsums, full_blocks, K, out + first_row,
                         ldo);
        }
        first_row += mv.rows;
      }
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace gemma
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace gemma {

HWY_EXPORT(MatMulImpl);

const char* MatMulTarget() {
  const int64_t usable = hwy::SupportedTargets() & HWY_TARGETS;
  return hwy::TargetName(usable & -usable);  // lower bits are the better targets
}

void MatMul(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights, float* out,
            int64_t ldo) {
  if (M <= 0 || weights.empty()) return;
  for (const MatrixView& v : weights) {
    // A 4-bit row is walked group by group, each group whole SIMD blocks: a view that breaks this would read past
    // its row. Views come from ModelWeights, which only makes whole groups of 32, 64 or 128.
    if (v.format == WeightFormat::kInt4 && (v.group_size < 32 || K % v.group_size != 0)) {
      std::fprintf(stderr, "MatMul: a 4-bit matrix of %lld columns in groups of %d\n", static_cast<long long>(K),
                   v.group_size);
      std::abort();
    }
  }
  // Formats that pack x alike run in one pass; a call that mixes them runs one view at a time.
  auto even_odd = [](WeightFormat f) { return f == WeightFormat::kBF16 || f == WeightFormat::kInt4; };
  bool mixed = false;
  for (const MatrixView& v : weights) mixed = mixed || even_odd(v.format) != even_odd(weights[0].format);
  if (!mixed) return HWY_DYNAMIC_DISPATCH(MatMulImpl)(x, M, K, ldx, weights.data(), weights.size(), out, ldo);
  for (const MatrixView& v : weights) {
    HWY_DYNAMIC_DISPATCH(MatMulImpl)(x, M, K, ldx, &v, 1, out, ldo);
    out += v.rows;
  }
}

}  // namespace gemma
#endif
