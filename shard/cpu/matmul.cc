#include "shard/cpu/matmul.h"

#include <omp.h>

#include <algorithm>

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
constexpr int64_t kPrefetchElements = 2048;  // 4 KB: best of 512..4096 on Zen, measured
// Bytes of packed x kept hot in L2 while one thread's rows stream past it.
constexpr int64_t kPanelBytes = 384 << 10;

// x is packed so that one 2N-wide block of k holds the N even elements, then
// the N odd ones: a u32 load of bf16 pairs then yields both halves as f32 with
// one shift and one mask, no shuffles.
void PackX(const float* x, int64_t M, int64_t K, int64_t ldx, int64_t packed_stride, float* xp) {
  const int64_t n2 = 2 * static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t full = K / n2;
#pragma omp parallel for schedule(static) if (M > 4)
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * ldx;
    float* dst = xp + m * packed_stride;
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

// R weight rows against T tokens over all of K. Every output is the same
// sequence of operations whatever R and T are (one chain of FMAs, even then odd
// elements of each block, reduced, then the scalar tail), so results do not
// depend on batching.
template <int R, int T>
HWY_INLINE void Tile(const uint16_t* HWY_RESTRICT w, int64_t w_stride, const float* HWY_RESTRICT xp,
                     int64_t xp_stride, const float* HWY_RESTRICT x, int64_t ldx, int64_t full_blocks, int64_t K,
                     float* HWY_RESTRICT out, int64_t ldo) {
  const DF df;
  const DU du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(df);
  const auto hi_mask = hn::Set(du, 0xFFFF0000u);
  for (int64_t b = 0; b < full_blocks; ++b) {
    VF lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      // Hardware prefetchers stop at 4 KB boundaries; a software prefetch ahead
      // keeps the weight stream flowing: 4 KB on for one row (running on into
      // the next row), the same place in the next tile of rows otherwise.
      __builtin_prefetch(w + r * w_stride + b * 2 * N + (R == 1 ? kPrefetchElements : R * w_stride));
      const auto u = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w + r * w_stride + b * 2 * N));
      lo[r] = hn::BitCast(df, hn::ShiftLeft<16>(u));
      hi[r] = hn::BitCast(df, hn::And(u, hi_mask));
    }
    for (int t = 0; t < T; ++t) {
      const VF xe = hn::Load(df, xp + t * xp_stride + b * 2 * N);
      const VF xo = hn::Load(df, xp + t * xp_stride + b * 2 * N + N);
      for (int r = 0; r < R; ++r) {
        acc[r][t] = hn::MulAdd(hi[r], xo, hn::MulAdd(lo[r], xe, acc[r][t]));
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      for (int64_t k = full_blocks * 2 * N; k < K; ++k) s += Bf16ToF32(w[r * w_stride + k]) * x[t * ldx + k];
      out[t * ldo + r] = s;
    }
  }
}

// Tile<R, T> for a runtime token count 1..T.
template <int R, int T>
HWY_INLINE void TileUpTo(int tokens, const uint16_t* w, int64_t w_stride, const float* xp, int64_t xp_stride,
                         const float* x, int64_t ldx, int64_t full_blocks, int64_t K, float* out, int64_t ldo) {
  if constexpr (T > 1) {
    if (tokens < T) return TileUpTo<R, T - 1>(tokens, w, w_stride, xp, xp_stride, x, ldx, full_blocks, K, out, ldo);
  }
  Tile<R, T>(w, w_stride, xp, xp_stride, x, ldx, full_blocks, K, out, ldo);
}

// Rows [r_begin, r_end) of one view against tokens [m0, m1).
void RowsTimesPanel(const MatrixView& mv, int64_t r_begin, int64_t r_end, int64_t m0, int64_t m1, const float* xp,
                    int64_t xp_stride, const float* x, int64_t ldx, int64_t full_blocks, int64_t K, float* out,
                    int64_t ldo) {
  const int64_t tokens = m1 - m0;
  if (tokens <= kStreamTokens) {
    for (int64_t r = r_begin; r < r_end; ++r) {
      TileUpTo<1, kStreamTokens>(static_cast<int>(tokens), mv.data + r * mv.stride, mv.stride, xp + m0 * xp_stride,
                                 xp_stride, x + m0 * ldx, ldx, full_blocks, K, out + m0 * ldo + r, ldo);
    }
    return;
  }
  int64_t r = r_begin;
  for (; r + kTileRows <= r_end; r += kTileRows) {
    for (int64_t m = m0; m < m1; m += kBlockTokens) {
      const int t = static_cast<int>(std::min<int64_t>(kBlockTokens, m1 - m));
      TileUpTo<kTileRows, kBlockTokens>(t, mv.data + r * mv.stride, mv.stride, xp + m * xp_stride, xp_stride,
                                        x + m * ldx, ldx, full_blocks, K, out + m * ldo + r, ldo);
    }
  }
  for (; r < r_end; ++r) {
    for (int64_t m = m0; m < m1; m += kBlockTokens) {
      const int t = static_cast<int>(std::min<int64_t>(kBlockTokens, m1 - m));
      TileUpTo<1, kBlockTokens>(t, mv.data + r * mv.stride, mv.stride, xp + m * xp_stride, xp_stride, x + m * ldx,
                                ldx, full_blocks, K, out + m * ldo + r, ldo);
    }
  }
}

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
  PackX(x, M, K, ldx, xp_stride, xp);

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
          RowsTimesPanel(mv, r_begin, r_end, m0, m1, xp, xp_stride, x, ldx, full_blocks, K, out + first_row, ldo);
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

void MatMul(const float* x, int64_t M, int64_t K, int64_t ldx, std::span<const MatrixView> weights, float* out,
            int64_t ldo) {
  if (M <= 0) return;
  HWY_DYNAMIC_DISPATCH(MatMulImpl)(x, M, K, ldx, weights.data(), weights.size(), out, ldo);
}

}  // namespace gemma
#endif
