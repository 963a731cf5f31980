#include "shard/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "shard/dtype.h"

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

// Rows of W per tile: enough accumulators to hide FMA latency within the register file.
#if HWY_TARGET <= HWY_AVX3
constexpr int kTileRows = 4;
#else
constexpr int kTileRows = 2;
#endif
constexpr int kTileTokens = 4;
// K is processed in blocks so a panel of x stays in L2 while W streams.
constexpr int64_t kBlockK = 1024;
constexpr int64_t kBlockM = 64;

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

// Accumulates R rows x T tokens over k in [kb0, kb1) blocks (+ the scalar tail
// when `tail` is set) and adds each sum into out (or stores it when `first`).
template <int R, int T>
HWY_INLINE void Tile(const uint16_t* HWY_RESTRICT w, int64_t w_stride, const float* HWY_RESTRICT xp,
                     int64_t xp_stride, const float* HWY_RESTRICT x, int64_t ldx, int64_t kb0, int64_t kb1,
                     int64_t tail_begin, int64_t tail_end, bool first, float* HWY_RESTRICT out, int64_t ldo) {
  const DF df;
  const DU du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(df));
  VF acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(df);
  const auto hi_mask = hn::Set(du, 0xFFFF0000u);
  for (int64_t b = kb0; b < kb1; ++b) {
    VF lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      const auto u = hn::LoadU(du, reinterpret_cast<const uint32_t*>(w + r * w_stride + b * 2 * N));
      lo[r] = hn::BitCast(df, hn::ShiftLeft<16>(u));
      hi[r] = hn::BitCast(df, hn::And(u, hi_mask));
    }
    for (int t = 0; t < T; ++t) {
      const VF xe = hn::Load(df, xp + t * xp_stride + b * 2 * N);
      const VF xo = hn::Load(df, xp + t * xp_stride + b * 2 * N + N);
      for (int r = 0; r < R; ++r) {
        acc[r][t] = hn::MulAdd(lo[r], xe, acc[r][t]);
        acc[r][t] = hn::MulAdd(hi[r], xo, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      for (int64_t k = tail_begin; k < tail_end; ++k) s += Bf16ToF32(w[r * w_stride + k]) * x[t * ldx + k];
      float& o = out[t * ldo + r];
      o = first ? s : o + s;
    }
  }
}

template <int R>
HWY_INLINE void TileTokens(int tokens, const uint16_t* w, int64_t w_stride, const float* xp, int64_t xp_stride,
                           const float* x, int64_t ldx, int64_t kb0, int64_t kb1, int64_t tail_begin, int64_t tail_end,
                           bool first, float* out, int64_t ldo) {
  switch (tokens) {
    case 4: return Tile<R, 4>(w, w_stride, xp, xp_stride, x, ldx, kb0, kb1, tail_begin, tail_end, first, out, ldo);
    case 3: return Tile<R, 3>(w, w_stride, xp, xp_stride, x, ldx, kb0, kb1, tail_begin, tail_end, first, out, ldo);
    case 2: return Tile<R, 2>(w, w_stride, xp, xp_stride, x, ldx, kb0, kb1, tail_begin, tail_end, first, out, ldo);
    default: return Tile<R, 1>(w, w_stride, xp, xp_stride, x, ldx, kb0, kb1, tail_begin, tail_end, first, out, ldo);
  }
}

struct RowBlock {
  const uint16_t* w;
  int64_t stride;
  int64_t out_col;
  int rows;
};

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

  std::vector<RowBlock> blocks;
  int64_t col = 0;
  for (size_t v = 0; v < num_views; ++v) {
    const MatrixView& mv = views[v];
    for (int64_t r = 0; r < mv.rows; r += kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, mv.rows - r));
      blocks.push_back({mv.data + r * mv.stride, mv.stride, col + r, rows});
    }
    col += mv.rows;
  }
  const int64_t blocks_per_k = kBlockK / n2;
  const int64_t num_kb = (full_blocks + blocks_per_k - 1) / blocks_per_k;
  const int64_t num_steps = std::max<int64_t>(num_kb, 1);
  const int64_t nb = static_cast<int64_t>(blocks.size());

#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads();
    const int64_t tid = omp_get_thread_num();
    const int64_t b_begin = nb * tid / nt;
    const int64_t b_end = nb * (tid + 1) / nt;
    for (int64_t step = 0; step < num_steps; ++step) {
      const int64_t kb0 = std::min(step * blocks_per_k, full_blocks);
      const int64_t kb1 = std::min(kb0 + blocks_per_k, full_blocks);
      const bool last = step + 1 == num_steps;
      const int64_t tail_begin = last ? full_blocks * n2 : 0;
      const int64_t tail_end = last ? K : 0;
      for (int64_t m0 = 0; m0 < M; m0 += kBlockM) {
        const int64_t m1 = std::min(M, m0 + kBlockM);
        for (int64_t b = b_begin; b < b_end; ++b) {
          const RowBlock& rb = blocks[b];
          for (int64_t m = m0; m < m1; m += kTileTokens) {
            const int tokens = static_cast<int>(std::min<int64_t>(kTileTokens, m1 - m));
            const float* xpm = xp + m * xp_stride;
            const float* xm = x + m * ldx;
            float* o = out + m * ldo + rb.out_col;
            if (rb.rows == kTileRows) {
              TileTokens<kTileRows>(tokens, rb.w, rb.stride, xpm, xp_stride, xm, ldx, kb0, kb1, tail_begin, tail_end,
                                    step == 0, o, ldo);
            } else {
              for (int r = 0; r < rb.rows; ++r) {
                TileTokens<1>(tokens, rb.w + r * rb.stride, rb.stride, xpm, xp_stride, xm, ldx, kb0, kb1, tail_begin,
                              tail_end, step == 0, o + r, ldo);
              }
            }
          }
        }
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
